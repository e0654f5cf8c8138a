//! Live operations for the console (docs/DESIGN.md §Console): this process's own metrics as
//! JSON, so an operator sees requests by outcome, 402s, ledger latency and the usage queue
//! without a Prometheus. `tollgate run` serves the gateway's figures; `tollgate admin`
//! alone has only its own (the gateways' are on their `/metrics`).

use crate::extract::Admin;
use crate::problem::{ApiResult, ProblemSchema};
use crate::time::{now_ms, rfc3339};
use crate::AdminState;
use axum::Json;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// A histogram's count and sum: the mean over an interval is Δsum / Δcount.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timing {
    count: u64,
    sum_seconds: f64,
}

/// Cumulative since the process started.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpsMetrics {
    at: String,
    /// Gateway requests per outcome (`forwarded`, `no_credits`, `rate_limited`, ...).
    requests: BTreeMap<String, u64>,
    credits_charged: u64,
    ledger: Timing,
    request: Timing,
    usage_queue_depth: i64,
    usage_journal_bytes: i64,
    usage_dropped: u64,
    usage_flushed: u64,
    deferred_pending: i64,
}

/// This process's gateway figures.
#[utoipa::path(get, path = "/admin/ops/metrics", tag = "reports", security(("bearer" = [])),
    responses((status = 200, body = OpsMetrics), (status = 403, body = ProblemSchema)))]
pub async fn metrics(_admin: Admin) -> ApiResult<Json<OpsMetrics>> {
    let s = tollgate::metrics::ops_snapshot();
    Ok(Json(OpsMetrics {
        at: rfc3339(now_ms()),
        requests: s.requests,
        credits_charged: s.credits_charged,
        ledger: Timing {
            count: s.ledger.0,
            sum_seconds: s.ledger.1,
        },
        request: Timing {
            count: s.request.0,
            sum_seconds: s.request.1,
        },
        usage_queue_depth: s.usage_queue_depth,
        usage_journal_bytes: s.usage_journal_bytes,
        usage_dropped: s.usage_dropped,
        usage_flushed: s.usage_flushed,
        deferred_pending: s.deferred_pending,
    }))
}
