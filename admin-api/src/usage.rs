//! What the console draws from usage (docs/DESIGN.md §Console): a tenant's calls and credits
//! over time per endpoint (JSON or CSV), its recent calls newest first, its own tenant
//! record, and each tenant's last call for the operators' list. Tenants see their own; the
//! admin routes take any tenant.

use crate::extract::{Admin, Caller, Query};
use crate::problem::{ApiResult, Problem, ProblemSchema};
use crate::reports::{log_page, LogPage, Order, UsageLogPage};
use crate::tenants::TenantView;
use crate::time::{now_ms, rfc3339};
use crate::AdminState;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use tollgate::store::UsagePoint;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(my_series))
        .routes(routes!(tenant_series))
        .routes(routes!(my_usage_logs))
        .routes(routes!(my_tenant))
        .routes(routes!(activity))
}

/// The most buckets one series answers: a month by the hour fits, a year by the hour does
/// not (ask by the day); bounds the work and the page.
const MAX_BUCKETS: i64 = 2_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    #[default]
    Hour,
    Day,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Csv,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesFilter {
    /// Start (inclusive): unix ms or RFC 3339 (the pattern shows days 1 to 28; every real
    /// date is taken); default 24 hours before `to`.
    #[param(
        pattern = r"^([+-]?[0-9]{1,18}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    from: Option<String>,
    /// End (exclusive): unix ms or RFC 3339; default now.
    #[param(
        pattern = r"^([+-]?[0-9]{1,18}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    to: Option<String>,
    /// `hour` (default) or `day`, aligned to UTC.
    #[param(inline)]
    bucket: Option<Bucket>,
    /// `json` (default) or `csv` (the same points, one per line).
    #[param(inline)]
    format: Option<Format>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesPoint {
    /// The bucket's start.
    start: String,
    service: String,
    endpoint: String,
    calls: u64,
    credits: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesView {
    tenant_id: String,
    from: String,
    to: String,
    bucket: String,
    /// In (start, service, endpoint) order; buckets without calls are absent.
    points: Vec<SeriesPoint>,
}

/// The caller's tenant's calls and credits per hour or day and endpoint (refunded calls
/// excluded), from the durable logs (a flush behind the ledger).
#[utoipa::path(get, path = "/me/usage/series", tag = "self-service", params(SeriesFilter),
    security(("bearer" = [])),
    responses((status = 200, content((SeriesView = "application/json"), (String = "text/csv"))),
        (status = 422, body = ProblemSchema)))]
pub async fn my_series(
    State(state): State<AdminState>,
    Caller(claims, _): Caller,
    Query(filter): Query<SeriesFilter>,
) -> ApiResult<Response> {
    series(&state, claims.tenant_id, &filter).await
}

/// One tenant's calls and credits per hour or day and endpoint.
#[utoipa::path(get, path = "/admin/tenants/{id}/usage/series", tag = "tenants",
    params(("id" = String, Path), SeriesFilter), security(("bearer" = [])),
    responses((status = 200, content((SeriesView = "application/json"), (String = "text/csv"))),
        (status = 404, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn tenant_series(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
    Query(filter): Query<SeriesFilter>,
) -> ApiResult<Response> {
    let tenant = crate::tenants::existing(&state, &id).await?;
    series(&state, tenant.id, &filter).await
}

async fn series(
    state: &AdminState,
    tenant_id: String,
    filter: &SeriesFilter,
) -> ApiResult<Response> {
    let to = match &filter.to {
        Some(t) => crate::extract::time_param("to", t)?,
        None => now_ms() + 1,
    };
    let from = match &filter.from {
        Some(f) => crate::extract::time_param("from", f)?,
        None => to.saturating_sub(DAY_MS),
    };
    if from > to {
        return Err(Problem::invalid("from", "must not be after `to`"));
    }
    let bucket = filter.bucket.unwrap_or_default();
    let (bucket_ms, name) = match bucket {
        Bucket::Hour => (HOUR_MS, "hour"),
        Bucket::Day => (DAY_MS, "day"),
    };
    if to.saturating_sub(from) / bucket_ms > MAX_BUCKETS {
        return Err(Problem::invalid(
            "bucket",
            format!("at most {MAX_BUCKETS} buckets: ask for a shorter range or by the day"),
        ));
    }
    let points = state
        .store
        .usage_series(&tenant_id, from, to, bucket_ms)
        .await?;
    if filter.format == Some(Format::Csv) {
        return Ok(csv(&tenant_id, &points));
    }
    let view = SeriesView {
        tenant_id,
        from: rfc3339(from),
        to: rfc3339(to),
        bucket: name.into(),
        points: points
            .into_iter()
            .map(|p| SeriesPoint {
                start: rfc3339(p.start_ms),
                service: p.service,
                endpoint: p.endpoint,
                calls: p.calls,
                credits: p.credits,
            })
            .collect(),
    };
    Ok(Json(view).into_response())
}

/// The points as CSV (RFC 4180): every text field quoted, so a comma or quote in a name
/// cannot shift a column, and a leading `=`, `+`, `-` or `@` cannot become a spreadsheet
/// formula (it is prefixed with `'`).
fn csv(tenant_id: &str, points: &[UsagePoint]) -> Response {
    fn field(out: &mut String, text: &str) {
        let guard = text.starts_with(['=', '+', '-', '@']);
        out.push('"');
        if guard {
            out.push('\'');
        }
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    }
    let mut out = String::from("start,service,endpoint,calls,credits\r\n");
    for p in points {
        out.push_str(&rfc3339(p.start_ms));
        out.push(',');
        field(&mut out, &p.service);
        out.push(',');
        field(&mut out, &p.endpoint);
        let _ = write!(out, ",{},{}\r\n", p.calls, p.credits);
    }
    let disposition = format!(
        "attachment; filename=\"usage-{}.csv\"",
        tenant_id.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "_"
        )
    );
    (
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (CONTENT_DISPOSITION, disposition),
        ],
        out,
    )
        .into_response()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MyLogFilter {
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

/// The caller's tenant's usage logs, paginated by cursor.
#[utoipa::path(get, path = "/me/usage-logs", tag = "self-service", params(MyLogFilter),
    security(("bearer" = [])), responses((status = 200, body = UsageLogPage), (status = 422, body = ProblemSchema)))]
pub async fn my_usage_logs(
    State(state): State<AdminState>,
    Caller(claims, _): Caller,
    Query(filter): Query<MyLogFilter>,
) -> ApiResult<Json<UsageLogPage>> {
    let page = LogPage {
        tenant_id: Some(claims.tenant_id),
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

/// The caller's own tenant: balance (live), status, plan and low-credit threshold.
#[utoipa::path(get, path = "/me/tenant", tag = "self-service", security(("bearer" = [])),
    responses((status = 200, body = TenantView), (status = 404, body = ProblemSchema)))]
pub async fn my_tenant(
    State(state): State<AdminState>,
    Caller(claims, _): Caller,
) -> ApiResult<Json<TenantView>> {
    let tenant = crate::tenants::existing(&state, &claims.tenant_id).await?;
    crate::tenants::view(&state, tenant).await.map(Json)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LastCall {
    tenant_id: String,
    last_call: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Activity {
    /// Tenants with any logged call, in id order.
    items: Vec<LastCall>,
}

/// Each tenant's latest logged call.
#[utoipa::path(get, path = "/admin/reports/activity", tag = "reports", security(("bearer" = [])),
    responses((status = 200, body = Activity), (status = 403, body = ProblemSchema)))]
pub async fn activity(State(state): State<AdminState>, _admin: Admin) -> ApiResult<Json<Activity>> {
    let items = state
        .store
        .last_calls()
        .await?
        .into_iter()
        .map(|(tenant_id, at)| LastCall {
            tenant_id,
            last_call: rfc3339(at),
        })
        .collect();
    Ok(Json(Activity { items }))
}
