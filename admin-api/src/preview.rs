//! `POST /admin/services/{name}/price-preview`: what a described call would cost at a
//! service's endpoint, evaluated by the gateway's own pricing (docs/DESIGN.md §Pricing), so
//! a price can be checked before it is saved (`credits` in the request tries one in place
//! of the endpoint's).

use crate::extract::{Admin, Body};
use crate::problem::{ApiResult, Problem, ProblemSchema};
use crate::services::{stored, CreditsBody};
use crate::AdminState;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tollgate::config::Credits;
use tollgate::pricing::{Call, PlanPrices};
use tollgate::routing::{Router, PROXY_PREFIX};
use tollgate::store::Kind;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(price_preview))
}

/// A call to price, as the gateway would see it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    #[schema(example = "GET", pattern = r"^[A-Za-z]+$")]
    method: String,
    /// The path after `/api/proxy/{service}`.
    #[schema(example = "/search", min_length = 1, max_length = 2048)]
    path: String,
    /// The raw query string, without `?`.
    #[schema(example = "pages=4", max_length = 8192)]
    query: Option<String>,
    /// The declared body size (`Content-Length`).
    size: Option<u64>,
    /// Headers the service offers its prices (`price_headers`); others are ignored.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// The calling tenant (its id, and its plan unless `plan_id` is given).
    #[schema(max_length = 64)]
    tenant_id: Option<String>,
    /// The plan to price for (its `price_overrides` apply).
    #[schema(max_length = 64)]
    plan_id: Option<String>,
    /// A price to try in place of the endpoint's `credits` (not saved).
    #[schema(value_type = Option<Object>)]
    credits: Option<CreditsBody>,
}

/// What the call would cost.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewAnswer {
    /// The endpoint the call matches, as the service declares it.
    method: String,
    endpoint: String,
    /// The price charged (a settled endpoint: what is charged when nothing is settled).
    credits: u32,
    /// The plan whose override applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    plan_id: Option<String>,
    /// A settled endpoint's reserve for this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    reserve: Option<u32>,
    /// The shadow price for this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow_credits: Option<u32>,
}

/// Evaluates a service's price for a described call: `422` names the request field that
/// does not route (`path`, `method`) or the price that cannot be computed for it
/// (`credits`, `reserve`, `shadow_credits`) and why.
#[utoipa::path(post, path = "/admin/services/{name}/price-preview", tag = "services",
    params(("name" = String, Path, description = "service name")), request_body = PreviewRequest,
    security(("bearer" = [])),
    responses((status = 200, body = PreviewAnswer), (status = 404, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn price_preview(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(name): Path<String>,
    Body(request): Body<PreviewRequest>,
) -> ApiResult<Json<PreviewAnswer>> {
    let mut service = stored(&state, &name).await?;
    let method = request.method.to_ascii_uppercase();
    if !method.bytes().all(|b| b.is_ascii_alphabetic()) || method.is_empty() {
        return Err(Problem::invalid("method", "an HTTP method"));
    }
    let full = format!("{PROXY_PREFIX}{name}{}", request.path);
    let query = request.query.as_deref().filter(|q| !q.is_empty());
    let route_of = |service: &tollgate::config::ServiceConfig| {
        let (router, _) = Router::lenient(std::slice::from_ref(service));
        router
            .route(&method, &full, query)
            .map_err(|_| Problem::invalid("path", "no endpoint of this service matches it"))
    };
    if let Some(credits) = request.credits {
        let index = route_of(&service)?.endpoint;
        service.endpoints[index].credits = Credits::from(credits);
        tollgate::routing::check_service(&service, "service")
            .map_err(|e| Problem::invalid("credits", e.to_string()))?;
    }
    let route = route_of(&service)?;
    let endpoint = route.endpoint();
    let plan = match (request.plan_id, &request.tenant_id) {
        (Some(plan), _) => Some(plan),
        (None, Some(tenant)) => state.store.tenant(tenant).await?.and_then(|t| t.plan_id),
        (None, None) => None,
    };
    let given: BTreeMap<String, String> = request
        .headers
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .collect();
    // As the gateway offers them: each listed header, `""` when the call has none.
    let headers: Vec<(String, String)> = route
        .service
        .price_headers
        .iter()
        .map(|h| {
            let value = given.get(h.as_str()).cloned().unwrap_or_default();
            (h.as_str().to_owned(), value)
        })
        .collect();
    let header_refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let call = Call {
        method: &method,
        path: &request.path,
        pattern: &endpoint.path,
        query,
        size: request.size,
        tenant: request.tenant_id.as_deref().unwrap_or(""),
        plan: plan.as_deref(),
        headers: &header_refs,
    };
    let failed = |field: &'static str, price: String| {
        move |why: String| {
            Problem::invalid(field, format!("`{price}` cannot price this call: {why}"))
        }
    };
    let prices = PlanPrices::from_docs(&state.docs.docs(Kind::Plans, None).await?);
    let (credits, plan_id) =
        match prices.override_for(plan.as_deref(), &name, &endpoint.method, &endpoint.path) {
            Some(price) => (price.credits, price.plan.map(|p| p.to_string())),
            None => (
                endpoint
                    .credits
                    .evaluate(&call)
                    .map_err(failed("credits", endpoint.credits.source()))?,
                None,
            ),
        };
    let reserve = match endpoint.settle.as_ref() {
        Some(terms) => Some(match &terms.reserve {
            Some(reserve) => reserve
                .evaluate(&call)
                .map_err(failed("reserve", reserve.source()))?,
            None => credits,
        }),
        None => None,
    };
    let shadow_credits = endpoint
        .shadow
        .as_ref()
        .map(|shadow| {
            shadow
                .evaluate(&call)
                .map_err(failed("shadow_credits", shadow.source()))
        })
        .transpose()?;
    Ok(Json(PreviewAnswer {
        method: endpoint.method.clone(),
        endpoint: endpoint.path.clone(),
        credits,
        plan_id,
        reserve,
        shadow_credits,
    }))
}
