//! Read-only reports for operators: usage logs (cursor-paginated), summaries, invoices and
//! notifications (the scheduler and the alerter write the last three).

use crate::extract::Admin;
use crate::extract::Query;
use crate::problem::{ApiResult, Problem, ProblemSchema};
use crate::time::rfc3339;
use crate::AdminState;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use tollgate::store::{Kind, UsageQuery};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The reports: usage logs, summaries, invoices, notifications.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(usage_logs))
        .routes(routes!(summaries))
        .routes(routes!(invoices))
        .routes(routes!(notifications))
        .routes(routes!(shadow))
}

/// A list of stored documents (their shapes: docs/DESIGN.md §Data model).
#[derive(Debug, Serialize, ToSchema)]
pub struct DocList {
    #[schema(value_type = Vec<Object>)]
    items: Vec<serde_json::Value>,
}

pub async fn docs_of(
    state: &AdminState,
    kind: Kind,
    tenant: Option<&str>,
) -> ApiResult<Json<DocList>> {
    let filter = tenant.map(|t| ("tenant_id", t));
    let docs = state.docs.docs(kind, filter).await?;
    Ok(Json(DocList {
        items: docs.into_iter().map(serde_json::Value::Object).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantFilter {
    tenant_id: Option<String>,
}

#[utoipa::path(get, path = "/admin/summaries", tag = "reports", params(TenantFilter),
    security(("bearer" = [])), responses((status = 200, body = DocList)))]
pub async fn summaries(
    State(state): State<AdminState>,
    _admin: Admin,
    Query(filter): Query<TenantFilter>,
) -> ApiResult<Json<DocList>> {
    docs_of(&state, Kind::UsageSummaries, filter.tenant_id.as_deref()).await
}

#[utoipa::path(get, path = "/admin/invoices", tag = "reports", params(TenantFilter),
    security(("bearer" = [])), responses((status = 200, body = DocList)))]
pub async fn invoices(
    State(state): State<AdminState>,
    _admin: Admin,
    Query(filter): Query<TenantFilter>,
) -> ApiResult<Json<DocList>> {
    docs_of(&state, Kind::Invoices, filter.tenant_id.as_deref()).await
}

#[utoipa::path(get, path = "/admin/notifications", tag = "reports", params(TenantFilter),
    security(("bearer" = [])), responses((status = 200, body = DocList)))]
pub async fn notifications(
    State(state): State<AdminState>,
    _admin: Admin,
    Query(filter): Query<TenantFilter>,
) -> ApiResult<Json<DocList>> {
    docs_of(&state, Kind::Notifications, filter.tenant_id.as_deref()).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogFilter {
    tenant_id: Option<String>,
    service: Option<String>,
    /// Calls made with this API key only.
    key_id: Option<String>,
    /// Inclusive: unix ms or RFC 3339 (the pattern shows days 1 to 28; every real date is
    /// taken).
    #[param(
        pattern = r"^([+-]?[0-9]{1,18}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    from: Option<String>,
    /// Exclusive: unix ms or RFC 3339.
    #[param(
        pattern = r"^([+-]?[0-9]{1,18}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    to: Option<String>,
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[+-]?[0-9]{1,18}_[\s\S]{1,64}$")]
    cursor: Option<String>,
    /// `asc` (oldest first, the default) or `desc` (newest first).
    #[param(inline)]
    order: Option<Order>,
}

/// The order of a page of usage logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// What a page of usage logs is of: the filters common to `/admin/usage-logs` and
/// `/me/usage-logs` (which names its own tenant).
pub(crate) struct LogPage<'a> {
    pub tenant_id: Option<String>,
    pub service: Option<String>,
    pub key_id: Option<String>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub limit: Option<usize>,
    pub cursor: Option<&'a str>,
    pub order: Option<Order>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageLogView {
    id: String,
    tenant_id: String,
    user_id: String,
    /// The API key the call was made with; absent: a JWT.
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    service: String,
    endpoint: String,
    method: String,
    credits_used: i64,
    /// The plan whose price the call paid; absent: the service's own price.
    #[serde(skip_serializing_if = "Option::is_none")]
    plan_id: Option<String>,
    /// A settled call's reserve, held before it was forwarded; `credits_used` is what it
    /// cost in the end. Absent: not a settled call.
    #[serde(skip_serializing_if = "Option::is_none")]
    reserved: Option<i64>,
    /// What a settled call cost beyond what the balance could cover (`overage: allow`).
    shortfall: i64,
    balance_after: i64,
    status: u16,
    latency_ms: f64,
    request_id: String,
    idempotency_key: Option<String>,
    refunded: bool,
    timestamp: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageLogPage {
    items: Vec<UsageLogView>,
    /// Pass back as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

const DEFAULT_PAGE: usize = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ShadowFilter {
    /// The service whose endpoints carry `shadow_credits`.
    service: String,
    /// Inclusive: unix ms or RFC 3339; default 30 days before `to`.
    #[param(
        pattern = r"^([+-]?[0-9]{1,18}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    from: Option<String>,
    /// Exclusive: unix ms or RFC 3339; default now.
    #[param(
        pattern = r"^([+-]?[0-9]{1,18}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    to: Option<String>,
}

/// One tenant's calls under a shadow price: what they were charged and what the shadow
/// price would have charged.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowLine {
    tenant_id: String,
    calls: u64,
    charged: i64,
    shadow: i64,
    /// `shadow - charged`: what the change would add to this tenant's bill (negative: save).
    difference: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowReport {
    service: String,
    from: String,
    to: String,
    calls: u64,
    charged: i64,
    shadow: i64,
    difference: i64,
    /// Per tenant, in id order.
    tenants: Vec<ShadowLine>,
}

/// Charged against shadow prices per tenant: what a price change would bill, before it is
/// made (calls whose endpoint had `shadow_credits`; refunded calls count 0 on both sides).
#[utoipa::path(get, path = "/admin/reports/shadow", tag = "reports", params(ShadowFilter),
    security(("bearer" = [])), responses((status = 200, body = ShadowReport), (status = 422, body = ProblemSchema)))]
pub async fn shadow(
    State(state): State<AdminState>,
    _admin: Admin,
    Query(filter): Query<ShadowFilter>,
) -> ApiResult<Json<ShadowReport>> {
    let to = match filter.to.as_deref() {
        Some(t) => crate::extract::time_param("to", t)?,
        None => tollgate::store::now_ms(),
    };
    let from = match filter.from.as_deref() {
        Some(f) => crate::extract::time_param("from", f)?,
        None => to.saturating_sub(30 * 24 * 3600 * 1000),
    };
    if from > to {
        return Err(Problem::invalid("from", "must not be after `to`"));
    }
    let totals = state.store.shadow_totals(&filter.service, from, to).await?;
    let tenants: Vec<ShadowLine> = totals
        .into_iter()
        .map(|t| ShadowLine {
            difference: t.shadow - t.charged,
            tenant_id: t.tenant_id,
            calls: t.calls,
            charged: t.charged,
            shadow: t.shadow,
        })
        .collect();
    let sum = |f: fn(&ShadowLine) -> i64| tenants.iter().map(f).sum::<i64>();
    Ok(Json(ShadowReport {
        service: filter.service,
        from: rfc3339(from),
        to: rfc3339(to),
        calls: tenants.iter().map(|t| t.calls).sum(),
        charged: sum(|t| t.charged),
        shadow: sum(|t| t.shadow),
        difference: sum(|t| t.difference),
        tenants,
    }))
}

/// The cursor is the last item's (timestamp, id): pages stay stable while logs arrive.
fn parse_cursor(cursor: &str) -> ApiResult<(i64, String)> {
    let bad = || Problem::invalid("cursor", "not a cursor this API returned");
    let (ts, id) = cursor.split_once('_').ok_or_else(bad)?;
    let ts = ts.parse().map_err(|_| bad())?;
    if id.is_empty() || id.chars().count() > 64 {
        return Err(bad());
    }
    Ok((ts, id.to_owned()))
}

/// Usage logs, oldest first (or newest, `order=desc`), filtered and paginated by cursor.
#[utoipa::path(get, path = "/admin/usage-logs", tag = "reports", params(LogFilter),
    security(("bearer" = [])), responses((status = 200, body = UsageLogPage), (status = 422, body = ProblemSchema)))]
pub async fn usage_logs(
    State(state): State<AdminState>,
    _admin: Admin,
    Query(filter): Query<LogFilter>,
) -> ApiResult<Json<UsageLogPage>> {
    let page = LogPage {
        tenant_id: filter.tenant_id,
        service: filter.service,
        key_id: filter.key_id,
        from: filter.from.as_deref(),
        to: filter.to.as_deref(),
        limit: filter.limit,
        cursor: filter.cursor.as_deref(),
        order: filter.order,
    };
    log_page(&state, page).await.map(Json)
}

/// One page of usage logs with the cursor of the next.
pub(crate) async fn log_page(state: &AdminState, page: LogPage<'_>) -> ApiResult<UsageLogPage> {
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=tollgate::store::MAX_LIST).contains(&limit) {
        return Err(Problem::invalid("limit", "1 to 1000"));
    }
    let query = UsageQuery {
        tenant_id: page.tenant_id,
        service: page.service,
        key_id: page.key_id,
        from_ms: page
            .from
            .map(|f| crate::extract::time_param("from", f))
            .transpose()?,
        to_ms: page
            .to
            .map(|t| crate::extract::time_param("to", t))
            .transpose()?,
        after: page.cursor.map(parse_cursor).transpose()?,
        limit: limit + 1,
        descending: page.order == Some(Order::Desc),
    };
    let mut events = state.store.usage_logs(&query).await?;
    let more = events.len() > limit;
    events.truncate(limit);
    let next_cursor = if more {
        events
            .last()
            .map(|e| format!("{}_{}", e.timestamp_ms, e.id))
    } else {
        None
    };
    let items = events
        .into_iter()
        .map(|e| UsageLogView {
            timestamp: rfc3339(e.timestamp_ms),
            id: e.id,
            tenant_id: e.tenant_id,
            user_id: e.user_id,
            key_id: e.key_id,
            service: e.service,
            endpoint: e.endpoint,
            method: e.method,
            credits_used: e.credits_used,
            plan_id: e.plan_id,
            reserved: e.reserved,
            shortfall: e.shortfall,
            balance_after: e.balance_after,
            status: e.status,
            latency_ms: e.latency_ms,
            request_id: e.request_id,
            idempotency_key: e.idempotency_key,
            refunded: e.refunded,
        })
        .collect();
    Ok(UsageLogPage { items, next_cursor })
}
