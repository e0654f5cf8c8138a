//! Services and their priced endpoints, stored in `services` and routed by every gateway
//! replica within 2 seconds of a change (see `tollgate::catalog`). Bodies are checked by the
//! same rules as the config file, so the API can never store what the gateway cannot route.

use crate::extract::Query;
use crate::extract::{Admin, Body};
use crate::problem::{ApiResult, Problem, ProblemSchema};
use crate::AdminState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tollgate::catalog::{service_from_doc, service_to_doc};
use tollgate::config::{
    ConfigError, Credits, EndpointConfig, OnLedgerError, Overage, ServiceConfig, SettleConfig,
    TimeoutsConfig,
};
use tollgate::store::Kind;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `/admin/services`, one service, and its endpoints.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
        .routes(routes!(add_endpoint, update_endpoint, remove_endpoint))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointBody {
    /// An HTTP method, or `ANY` (any case: stored upper-case).
    #[schema(example = "POST", pattern = r"^[A-Za-z]+$")]
    method: String,
    /// `/exact`, `/with/{param}` or `/prefix/*`.
    #[schema(
        example = "/notes/create",
        pattern = r"^/(([^/{}*%\\.][^/{}*%\\]*|\.[^/{}*%\\.][^/{}*%\\]*|\.\.[^/{}*%\\]+|\{[A-Za-z0-9_]+\})/)*([^/{}*%\\.][^/{}*%\\]*|\.[^/{}*%\\.][^/{}*%\\]*|\.\.[^/{}*%\\]+|\{[A-Za-z0-9_]+\}|\*)?$"
    )]
    path: String,
    #[schema(schema_with = credits_schema)]
    credits: CreditsBody,
    /// Held before forwarding when the cost is settled from the response (`credits` when
    /// absent); needs `settle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = optional_credits_schema)]
    reserve: Option<CreditsBody>,
    /// Where the call's final cost is read from the upstream's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<SettleBody>)]
    settle: Option<SettleConfig>,
    /// A settled cost above the reserve: `cap` (the default: charge the reserve) or `allow`
    /// (take the rest as far as the balance goes; the shortfall is logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "cap", pattern = "^(cap|allow)$")]
    overage: Option<Overage>,
    /// A price evaluated and logged beside `credits` but never charged
    /// (`GET /admin/reports/shadow` compares the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = optional_credits_schema)]
    shadow_credits: Option<CreditsBody>,
}

/// Where a settled endpoint's cost is read (one of the three; docs/DESIGN.md §Settled
/// prices).
#[derive(ToSchema)]
#[allow(dead_code)] // the schema of `SettleConfig`, which is what is parsed
pub struct SettleBody {
    /// A response header holding whole credits, e.g. `X-Usage-Credits`.
    #[schema(example = "X-Usage-Credits", min_length = 1, max_length = 256)]
    header: Option<String>,
    /// A CEL expression over `response.body` (JSON) and `response.status`.
    #[schema(
        example = "response.body.usage.total_tokens / 100",
        min_length = 1,
        max_length = 1024
    )]
    json: Option<String>,
    /// A CEL expression over `event`: the last server-sent event with a `usage` object.
    #[schema(
        example = "event.usage.total_tokens / 10",
        min_length = 1,
        max_length = 1024
    )]
    sse: Option<String>,
}

/// `credits` in the schema: an integer in range, or an expression's text.
fn credits_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(1_000_000)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(1024))
                .examples(["1 + int(request.query.pages)"]),
        )
        .description(Some(
            "0 to 1,000,000 credits, or a CEL expression over the call that comes to one",
        ))
        .build();
    Schema::OneOf(one_of)
}

/// An optional price (`reserve`, `shadow_credits`): as `credits`, or `null` for none.
fn optional_credits_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let utoipa::openapi::schema::Schema::OneOf(credits) = credits_schema() else {
        return credits_schema();
    };
    let mut one_of = OneOfBuilder::new();
    for item in credits.items {
        one_of = one_of.item(item);
    }
    Schema::OneOf(
        one_of
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(credits.description)
            .build(),
    )
}

/// A price: 0 to 1,000,000 credits, or a CEL expression over the request that comes to
/// one, e.g. `1 + int(request.query.pages)` (docs/DESIGN.md §Pricing). A bad expression is
/// refused with `endpoints[i].credits`, the line and column, and the reason.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CreditsBody {
    Fixed(u32),
    Expression(String),
}

impl From<CreditsBody> for Credits {
    fn from(c: CreditsBody) -> Credits {
        match c {
            CreditsBody::Fixed(n) => Credits::Fixed(n),
            CreditsBody::Expression(e) => Credits::Expression(e),
        }
    }
}

impl From<Credits> for CreditsBody {
    fn from(c: Credits) -> CreditsBody {
        match c {
            Credits::Fixed(n) => CreditsBody::Fixed(n),
            Credits::Expression(e) => CreditsBody::Expression(e),
        }
    }
}

impl From<EndpointBody> for EndpointConfig {
    fn from(e: EndpointBody) -> Self {
        EndpointConfig {
            method: e.method.to_ascii_uppercase(),
            path: e.path,
            credits: e.credits.into(),
            reserve: e.reserve.map(Into::into),
            settle: e.settle,
            overage: e.overage.unwrap_or_default(),
            shadow_credits: e.shadow_credits.map(Into::into),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsBody {
    #[schema(minimum = 1, maximum = 3_600_000)]
    connect_ms: Option<u64>,
    #[schema(minimum = 1, maximum = 3_600_000)]
    read_ms: Option<u64>,
    #[schema(minimum = 1, maximum = 3_600_000)]
    write_ms: Option<u64>,
}

impl TimeoutsBody {
    fn apply(self, mut t: TimeoutsConfig) -> TimeoutsConfig {
        t.connect_ms = self.connect_ms.unwrap_or(t.connect_ms);
        t.read_ms = self.read_ms.unwrap_or(t.read_ms);
        t.write_ms = self.write_ms.unwrap_or(t.write_ms);
        t
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceView {
    name: String,
    upstream: String,
    #[schema(value_type = Object)]
    timeouts: TimeoutsConfig,
    refund_on_5xx: bool,
    #[schema(value_type = String, example = "deny")]
    on_ledger_error: OnLedgerError,
    public: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    price_headers: Vec<String>,
    endpoints: Vec<EndpointBody>,
}

impl From<ServiceConfig> for ServiceView {
    fn from(s: ServiceConfig) -> Self {
        ServiceView {
            name: s.name,
            upstream: s.upstream,
            timeouts: s.timeouts,
            refund_on_5xx: s.refund_on_5xx,
            on_ledger_error: s.on_ledger_error,
            public: s.public,
            price_headers: s.price_headers,
            endpoints: s
                .endpoints
                .into_iter()
                .map(|e| EndpointBody {
                    method: e.method,
                    path: e.path,
                    credits: e.credits.into(),
                    reserve: e.reserve.map(Into::into),
                    settle: e.settle,
                    overage: (!e.overage.is_cap()).then_some(e.overage),
                    shadow_credits: e.shadow_credits.map(Into::into),
                })
                .collect(),
        }
    }
}

/// The config's rules, with the key turned into the body's field name.
async fn check(service: &ServiceConfig) -> ApiResult<()> {
    tollgate::routing::check_service(service, "").map_err(|e| match e {
        ConfigError::Invalid { key, message } => {
            Problem::invalid(key.trim_start_matches('.'), message)
        }
        other => Problem::bad_request(other.to_string()),
    })?;
    // An upstream whose host does not resolve could never be reached: say so now.
    let upstream = service.upstream.clone();
    tokio::task::spawn_blocking(move || {
        tollgate::routing::Upstream::parse(&upstream).and_then(|u| u.resolve())
    })
    .await
    .map_err(|e| Problem::unavailable("resolver", e))?
    .map_err(|e| Problem::invalid("upstream", e))?;
    Ok(())
}

pub(crate) async fn stored(state: &AdminState, name: &str) -> ApiResult<ServiceConfig> {
    let doc = state
        .docs
        .doc(Kind::Services, name)
        .await?
        .ok_or_else(|| Problem::not_found("service"))?;
    service_from_doc(doc).map_err(|e| Problem::unavailable("store", e))
}

async fn save(state: &AdminState, service: ServiceConfig) -> ApiResult<Json<ServiceView>> {
    check(&service).await?;
    if !state
        .docs
        .replace_doc(Kind::Services, &service_to_doc(&service))
        .await?
    {
        return Err(Problem::not_found("service"));
    }
    state.catalog_changed().await;
    Ok(Json(ServiceView::from(service)))
}

/// What the gateway does when the ledger cannot answer, as the document shows it.
#[derive(ToSchema)]
#[schema(as = OnLedgerError)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // described, never built: the body holds tollgate::config::OnLedgerError
pub enum OnLedgerErrorSchema {
    Deny,
    Allow,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewService {
    /// The `{service}` of `/api/proxy/{service}/...`: 1 to 64 of `A-Z a-z 0-9 _ . -`
    /// (not `.` or `..`).
    #[schema(
        pattern = r"^([A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}|\.[A-Za-z0-9_-][A-Za-z0-9_.-]{0,62}|\.\.[A-Za-z0-9_.-]{1,62})$"
    )]
    name: String,
    /// `http://` or `https://` base URL whose host resolves; its path prefixes every
    /// forwarded path.
    #[schema(
        example = "http://127.0.0.1:9000",
        pattern = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
    )]
    upstream: String,
    timeouts: Option<TimeoutsBody>,
    /// Give the credits back when the upstream answers 5xx (default false).
    #[serde(default)]
    refund_on_5xx: bool,
    /// When the ledger cannot answer: `deny` (default: 503) or `allow` (forward, charge
    /// once it answers again).
    #[serde(default)]
    #[schema(value_type = OnLedgerErrorSchema, example = "deny")]
    on_ledger_error: OnLedgerError,
    /// Free and open: no token, no charge (default false).
    #[serde(default)]
    public: bool,
    /// Request headers a price expression may read as `request.headers["name"]`
    /// (lower-case names, at most 16).
    #[serde(default)]
    #[schema(max_items = 16)]
    price_headers: Vec<String>,
    #[schema(min_items = 1)]
    endpoints: Vec<EndpointBody>,
}

#[utoipa::path(post, path = "/admin/services", tag = "services", request_body = NewService,
    security(("bearer" = [])),
    responses((status = 201, body = ServiceView), (status = 409, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn create(
    State(state): State<AdminState>,
    _admin: Admin,
    Body(body): Body<NewService>,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    let service = ServiceConfig {
        name: body.name,
        upstream: body.upstream,
        timeouts: body.timeouts.map_or_else(TimeoutsConfig::default, |t| {
            t.apply(TimeoutsConfig::default())
        }),
        refund_on_5xx: body.refund_on_5xx,
        on_ledger_error: body.on_ledger_error,
        public: body.public,
        price_headers: body.price_headers,
        endpoints: body
            .endpoints
            .into_iter()
            .map(EndpointConfig::from)
            .collect(),
    };
    check(&service).await?;
    if !state
        .docs
        .insert_doc(Kind::Services, &service_to_doc(&service))
        .await?
    {
        return Err(Problem::conflict("name", "a service with this name exists"));
    }
    state.catalog_changed().await;
    Ok((StatusCode::CREATED, Json(ServiceView::from(service))))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceList {
    items: Vec<ServiceView>,
}

#[utoipa::path(get, path = "/admin/services", tag = "services", security(("bearer" = [])),
    responses((status = 200, body = ServiceList)))]
pub async fn list(State(state): State<AdminState>, _admin: Admin) -> ApiResult<Json<ServiceList>> {
    let mut items = Vec::new();
    for doc in state.docs.docs(Kind::Services, None).await? {
        match service_from_doc(doc) {
            Ok(service) => items.push(ServiceView::from(service)),
            Err(e) => tracing::error!(error = %e, "stored service does not parse"),
        }
    }
    Ok(Json(ServiceList { items }))
}

#[utoipa::path(get, path = "/admin/services/{name}", tag = "services",
    params(("name" = String, Path, description = "service name")), security(("bearer" = [])),
    responses((status = 200, body = ServiceView), (status = 404, body = ProblemSchema)))]
pub async fn get(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<ServiceView>> {
    Ok(Json(ServiceView::from(stored(&state, &name).await?)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicePatch {
    #[schema(
        example = "http://127.0.0.1:9000",
        pattern = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
    )]
    upstream: Option<String>,
    timeouts: Option<TimeoutsBody>,
    refund_on_5xx: Option<bool>,
    #[schema(value_type = Option<OnLedgerErrorSchema>, example = "allow")]
    on_ledger_error: Option<OnLedgerError>,
    public: Option<bool>,
    #[schema(max_items = 16)]
    price_headers: Option<Vec<String>>,
    /// Replaces the whole list.
    #[schema(min_items = 1)]
    endpoints: Option<Vec<EndpointBody>>,
}

/// Changes any subset of a service's fields (the name is its key and stays).
#[utoipa::path(patch, path = "/admin/services/{name}", tag = "services",
    params(("name" = String, Path, description = "service name")), request_body = ServicePatch,
    security(("bearer" = [])),
    responses((status = 200, body = ServiceView), (status = 404, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn update(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(name): Path<String>,
    Body(patch): Body<ServicePatch>,
) -> ApiResult<Json<ServiceView>> {
    let mut service = stored(&state, &name).await?;
    if let Some(upstream) = patch.upstream {
        service.upstream = upstream;
    }
    if let Some(timeouts) = patch.timeouts {
        service.timeouts = timeouts.apply(service.timeouts);
    }
    if let Some(refund) = patch.refund_on_5xx {
        service.refund_on_5xx = refund;
    }
    if let Some(mode) = patch.on_ledger_error {
        service.on_ledger_error = mode;
    }
    if let Some(public) = patch.public {
        service.public = public;
    }
    if let Some(headers) = patch.price_headers {
        service.price_headers = headers;
    }
    if let Some(endpoints) = patch.endpoints {
        service.endpoints = endpoints.into_iter().map(EndpointConfig::from).collect();
    }
    save(&state, service).await
}

#[utoipa::path(delete, path = "/admin/services/{name}", tag = "services",
    params(("name" = String, Path, description = "service name")), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ProblemSchema)))]
pub async fn delete(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if !state.docs.delete_doc(Kind::Services, &name).await? {
        return Err(Problem::not_found("service"));
    }
    state.catalog_changed().await;
    Ok(StatusCode::NO_CONTENT)
}

fn same_route(e: &EndpointConfig, method: &str, path: &str) -> bool {
    e.method.eq_ignore_ascii_case(method) && e.path == path
}

/// Adds one endpoint.
#[utoipa::path(post, path = "/admin/services/{name}/endpoints", tag = "services",
    params(("name" = String, Path, description = "service name")), request_body = EndpointBody,
    security(("bearer" = [])),
    responses((status = 201, body = ServiceView), (status = 404, body = ProblemSchema), (status = 409, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn add_endpoint(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(name): Path<String>,
    Body(endpoint): Body<EndpointBody>,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    let mut service = stored(&state, &name).await?;
    if service
        .endpoints
        .iter()
        .any(|e| same_route(e, &endpoint.method, &endpoint.path))
    {
        return Err(Problem::conflict(
            "path",
            "this method and path exist; use PUT to change the price",
        ));
    }
    service.endpoints.push(endpoint.into());
    let saved = save(&state, service).await.map_err(endpoint_field)?;
    Ok((StatusCode::CREATED, saved))
}

/// The service's rules name `endpoints[i].credits`; a request that sent one endpoint names
/// its own field (`credits`), or `path` for the endpoint as a whole.
fn endpoint_field(problem: Problem) -> Problem {
    let field = match problem.field() {
        Some(field) if field.starts_with("endpoints[") => match field.split_once("].") {
            Some((_, own)) => own.to_owned(),
            None => "path".to_owned(),
        },
        _ => return problem,
    };
    problem.with_field(field)
}

/// Changes the price of the endpoint with this method and path (`422` naming `path` when the
/// service declares none).
#[utoipa::path(put, path = "/admin/services/{name}/endpoints", tag = "services",
    params(("name" = String, Path, description = "service name")), request_body = EndpointBody,
    security(("bearer" = [])),
    responses((status = 200, body = ServiceView), (status = 404, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn update_endpoint(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(name): Path<String>,
    Body(endpoint): Body<EndpointBody>,
) -> ApiResult<Json<ServiceView>> {
    let mut service = stored(&state, &name).await?;
    let Some(existing) = service
        .endpoints
        .iter_mut()
        .find(|e| same_route(e, &endpoint.method, &endpoint.path))
    else {
        // The URL names the service, which exists; the body names an endpoint it does not
        // declare: a bad reference in the body, as in a price preview or a plan override.
        return Err(Problem::invalid(
            "path",
            "the service declares no endpoint with this method and path; POST to add one",
        ));
    };
    *existing = endpoint.into();
    save(&state, service).await.map_err(endpoint_field)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EndpointKey {
    #[param(pattern = r"^[A-Za-z]+$")]
    method: String,
    path: String,
}

/// Removes the endpoint with this method and path (a service keeps at least one).
#[utoipa::path(delete, path = "/admin/services/{name}/endpoints", tag = "services",
    params(("name" = String, Path, description = "service name"), EndpointKey),
    security(("bearer" = [])),
    responses((status = 200, body = ServiceView), (status = 404, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn remove_endpoint(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(name): Path<String>,
    Query(key): Query<EndpointKey>,
) -> ApiResult<Json<ServiceView>> {
    let mut service = stored(&state, &name).await?;
    let before = service.endpoints.len();
    service
        .endpoints
        .retain(|e| !same_route(e, &key.method, &key.path));
    if service.endpoints.len() == before {
        return Err(Problem::not_found("endpoint"));
    }
    save(&state, service).await
}
