//! API keys (docs/DESIGN.md §API keys): an operator's, under `/admin/tenants/{id}/keys`, and
//! a tenant's own, under `/me/keys` (any signed-in user of the tenant: a key itself is not
//! accepted by the control plane, so a leaked key cannot make or keep keys). The key is
//! answered once, at creation or roll; listings show its prefix. Every change reaches the
//! gateways through the catalog version (≤ 2 s).

use crate::auth::check_name;
use crate::extract::{double_option, time_param, Admin, Body, Caller};
use crate::limits::RateLimitBody;
use crate::problem::{ApiResult, Problem, ProblemSchema};
use crate::records::{from_doc, to_doc};
use crate::time::{now_ms, rfc3339};
use crate::AdminState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tollgate::auth::keys::{self, KeyRecord};
use tollgate::ledger::MAX_BALANCE;
use tollgate::store::Kind;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Keys a tenant may hold at once (disabled and expired ones count until deleted).
pub const MAX_KEYS_PER_TENANT: usize = 100;
/// Services one key may be limited to.
const MAX_KEY_SERVICES: usize = 64;
/// The longest overlap of a roll: the old key's last 30 days.
const MAX_OVERLAP_SECS: i64 = 30 * 24 * 3600;

pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(admin_create, admin_list))
        .routes(routes!(admin_update, admin_delete))
        .routes(routes!(admin_roll))
        .routes(routes!(my_create, my_list))
        .routes(routes!(my_update, my_delete))
        .routes(routes!(my_roll))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    /// What the key is for, to recognise it by.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: String,
    /// The services the key may call (at least one); absent: every service.
    #[schema(min_items = 1, max_items = 64)]
    services: Option<Vec<String>>,
    /// After this the key is refused: RFC 3339 or unix ms, in the future.
    expires_at: Option<String>,
    /// The most the key may spend per calendar month (UTC), in credits, drawn from the
    /// tenant's balance; past it the key's calls get `402` while the tenant's other keys
    /// go on.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    budget: Option<i64>,
    /// The key's own rate limit, beside its tenant's (docs/DESIGN.md §Limits).
    rate_limit: Option<RateLimitBody>,
    /// The key's own most calls in flight, beside its tenant's.
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_concurrent: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: Option<String>,
    /// `null`: every service.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(min_items = 1, max_items = 64, nullable)]
    services: Option<Option<Vec<String>>>,
    /// `null`: no monthly cap.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64, nullable)]
    budget: Option<Option<i64>>,
    /// A disabled key is refused until enabled again.
    disabled: Option<bool>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(nullable)]
    rate_limit: Option<Option<RateLimitBody>>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(minimum = 1, maximum = 1_000_000, nullable)]
    max_concurrent: Option<Option<u32>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollBody {
    /// How long the old key keeps working beside the new one, in seconds (0 to 30 days).
    #[schema(minimum = 0, maximum = 2_592_000)]
    overlap_secs: i64,
}

/// A key as listed: never the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    id: String,
    tenant_id: String,
    name: String,
    /// The key's first characters (`tg_live_` and six more), to recognise it by.
    prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    services: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimitBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    disabled: bool,
    created_at: String,
    created_by: String,
    /// The key this one replaced by a roll.
    #[serde(skip_serializing_if = "Option::is_none")]
    rolled_from: Option<String>,
}

impl From<KeyRecord> for KeyView {
    fn from(r: KeyRecord) -> KeyView {
        KeyView {
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            prefix: r.prefix,
            services: r.services,
            budget: r.budget,
            rate_limit: r.limits.rate_limit.map(RateLimitBody::from),
            max_concurrent: r.limits.max_concurrent,
            expires_at: r.expires_at_ms.map(rfc3339),
            disabled: r.disabled,
            created_at: rfc3339(r.created_at_ms),
            created_by: r.created_by,
            rolled_from: r.rolled_from,
        }
    }
}

/// A key just made: the only answer that holds the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key: shown this once, never stored (only its hash is).
    key: String,
    #[serde(flatten)]
    view: KeyView,
}

/// The answer to a roll: the new key, and until when the old one still works.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolledKey {
    #[serde(flatten)]
    created: CreatedKey,
    /// The old key, now expiring at the end of the overlap.
    previous: KeyView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    items: Vec<KeyView>,
}

// ---- the operator's routes ----

#[utoipa::path(post, path = "/admin/tenants/{id}/keys", tag = "keys",
    params(("id" = String, Path, description = "tenant id")), request_body = NewKeyBody,
    security(("bearer" = [])),
    responses((status = 201, body = CreatedKey), (status = 404, body = ProblemSchema),
        (status = 409, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn admin_create(
    State(state): State<AdminState>,
    Admin(claims): Admin,
    Path(tenant): Path<String>,
    Body(body): Body<NewKeyBody>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    crate::tenants::existing(&state, &tenant).await?;
    create(&state, &tenant, &claims.sub, body).await
}

#[utoipa::path(get, path = "/admin/tenants/{id}/keys", tag = "keys",
    params(("id" = String, Path, description = "tenant id")), security(("bearer" = [])),
    responses((status = 200, body = KeyList), (status = 404, body = ProblemSchema)))]
pub async fn admin_list(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(tenant): Path<String>,
) -> ApiResult<Json<KeyList>> {
    crate::tenants::existing(&state, &tenant).await?;
    list(&state, &tenant).await
}

#[utoipa::path(patch, path = "/admin/tenants/{id}/keys/{key_id}", tag = "keys",
    params(("id" = String, Path, description = "tenant id"), ("key_id" = String, Path, description = "key id")),
    request_body = KeyPatch, security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 404, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn admin_update(
    State(state): State<AdminState>,
    _admin: Admin,
    Path((tenant, key_id)): Path<(String, String)>,
    Body(patch): Body<KeyPatch>,
) -> ApiResult<Json<KeyView>> {
    update(&state, &tenant, &key_id, patch).await
}

#[utoipa::path(delete, path = "/admin/tenants/{id}/keys/{key_id}", tag = "keys",
    params(("id" = String, Path, description = "tenant id"), ("key_id" = String, Path, description = "key id")),
    security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ProblemSchema)))]
pub async fn admin_delete(
    State(state): State<AdminState>,
    _admin: Admin,
    Path((tenant, key_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    delete(&state, &tenant, &key_id).await
}

#[utoipa::path(post, path = "/admin/tenants/{id}/keys/{key_id}/roll", tag = "keys",
    params(("id" = String, Path, description = "tenant id"), ("key_id" = String, Path, description = "key id")),
    request_body = RollBody, security(("bearer" = [])),
    responses((status = 201, body = RolledKey), (status = 404, body = ProblemSchema),
        (status = 409, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn admin_roll(
    State(state): State<AdminState>,
    Admin(claims): Admin,
    Path((tenant, key_id)): Path<(String, String)>,
    Body(body): Body<RollBody>,
) -> ApiResult<(StatusCode, Json<RolledKey>)> {
    roll(&state, &tenant, &key_id, &claims.sub, body).await
}

// ---- the tenant's own ----

#[utoipa::path(post, path = "/me/keys", tag = "self-service", request_body = NewKeyBody,
    security(("bearer" = [])),
    responses((status = 201, body = CreatedKey), (status = 401, body = ProblemSchema),
        (status = 409, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn my_create(
    State(state): State<AdminState>,
    Caller(claims, _): Caller,
    Body(body): Body<NewKeyBody>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    create(&state, &claims.tenant_id, &claims.sub, body).await
}

#[utoipa::path(get, path = "/me/keys", tag = "self-service", security(("bearer" = [])),
    responses((status = 200, body = KeyList), (status = 401, body = ProblemSchema)))]
pub async fn my_list(
    State(state): State<AdminState>,
    Caller(claims, _): Caller,
) -> ApiResult<Json<KeyList>> {
    list(&state, &claims.tenant_id).await
}

#[utoipa::path(patch, path = "/me/keys/{key_id}", tag = "self-service",
    params(("key_id" = String, Path, description = "key id")), request_body = KeyPatch,
    security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 404, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn my_update(
    State(state): State<AdminState>,
    Caller(claims, _): Caller,
    Path(key_id): Path<String>,
    Body(patch): Body<KeyPatch>,
) -> ApiResult<Json<KeyView>> {
    update(&state, &claims.tenant_id, &key_id, patch).await
}

#[utoipa::path(delete, path = "/me/keys/{key_id}", tag = "self-service",
    params(("key_id" = String, Path, description = "key id")), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ProblemSchema)))]
pub async fn my_delete(
    State(state): State<AdminState>,
    Caller(claims, _): Caller,
    Path(key_id): Path<String>,
) -> ApiResult<StatusCode> {
    delete(&state, &claims.tenant_id, &key_id).await
}

#[utoipa::path(post, path = "/me/keys/{key_id}/roll", tag = "self-service",
    params(("key_id" = String, Path, description = "key id")), request_body = RollBody,
    security(("bearer" = [])),
    responses((status = 201, body = RolledKey), (status = 404, body = ProblemSchema),
        (status = 409, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn my_roll(
    State(state): State<AdminState>,
    Caller(claims, _): Caller,
    Path(key_id): Path<String>,
    Body(body): Body<RollBody>,
) -> ApiResult<(StatusCode, Json<RolledKey>)> {
    roll(&state, &claims.tenant_id, &key_id, &claims.sub, body).await
}

// ---- what both do ----

async fn create(
    state: &AdminState,
    tenant: &str,
    actor: &str,
    body: NewKeyBody,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    check_name("name", &body.name)?;
    if let Some(services) = &body.services {
        check_services(state, services).await?;
    }
    if let Some(budget) = body.budget {
        check_budget(budget)?;
    }
    let expires_at_ms = match &body.expires_at {
        Some(at) => {
            let at = time_param("expires_at", at)?;
            if at <= now_ms() {
                return Err(Problem::invalid("expires_at", "must be in the future"));
            }
            Some(at)
        }
        None => None,
    };
    let limits = crate::limits::limits(body.rate_limit, body.max_concurrent)?;
    check_room(state, tenant).await?;
    let template = KeyRecord {
        limits,
        id: String::new(),
        tenant_id: tenant.to_owned(),
        name: body.name,
        prefix: String::new(),
        hash: String::new(),
        services: body.services,
        budget: body.budget,
        expires_at_ms,
        disabled: false,
        created_at_ms: 0,
        created_by: actor.to_owned(),
        rolled_from: None,
        budget_id: None,
    };
    let created = issue(state, template).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Stores a new key made from `template` (its id, key, prefix, hash and time are new) and
/// tells the gateways.
async fn issue(state: &AdminState, template: KeyRecord) -> ApiResult<CreatedKey> {
    let new = keys::generate();
    let record = KeyRecord {
        id: format!("key_{}", uuid::Uuid::now_v7().simple()),
        prefix: new.shown,
        hash: keys::hash_hex(&new.hash),
        created_at_ms: now_ms(),
        ..template
    };
    if !state
        .docs
        .insert_doc(Kind::ApiKeys, &to_doc(&record))
        .await?
    {
        // 178 random bits colliding, or a UUIDv7 repeated: not in this universe.
        return Err(Problem::conflict(
            "id",
            "a key with this id or hash exists; try again",
        ));
    }
    state.catalog_changed().await;
    Ok(CreatedKey {
        key: new.key,
        view: record.into(),
    })
}

async fn list(state: &AdminState, tenant: &str) -> ApiResult<Json<KeyList>> {
    let docs = state
        .docs
        .docs(Kind::ApiKeys, Some(("tenant_id", tenant)))
        .await?;
    let items = docs
        .into_iter()
        .map(|doc| from_doc::<KeyRecord>(doc).map(KeyView::from))
        .collect::<Result<_, _>>()?;
    Ok(Json(KeyList { items }))
}

/// The key `id` of `tenant` (another tenant's key is not found, so ids cannot be probed).
async fn stored(state: &AdminState, tenant: &str, id: &str) -> ApiResult<KeyRecord> {
    let doc = state.docs.doc(Kind::ApiKeys, id).await?;
    let record: Option<KeyRecord> = doc.map(from_doc).transpose()?;
    record
        .filter(|r| r.tenant_id == tenant)
        .ok_or_else(|| Problem::not_found("key"))
}

async fn update(
    state: &AdminState,
    tenant: &str,
    id: &str,
    patch: KeyPatch,
) -> ApiResult<Json<KeyView>> {
    let mut record = stored(state, tenant, id).await?;
    if let Some(name) = patch.name {
        check_name("name", &name)?;
        record.name = name;
    }
    if let Some(services) = patch.services {
        if let Some(services) = &services {
            check_services(state, services).await?;
        }
        record.services = services;
    }
    if let Some(budget) = patch.budget {
        if let Some(budget) = budget {
            check_budget(budget)?;
        }
        record.budget = budget;
    }
    if let Some(disabled) = patch.disabled {
        record.disabled = disabled;
    }
    if patch.rate_limit.is_some() || patch.max_concurrent.is_some() {
        record.limits =
            crate::limits::patched(record.limits, patch.rate_limit, patch.max_concurrent)?;
    }
    if !state
        .docs
        .replace_doc(Kind::ApiKeys, &to_doc(&record))
        .await?
    {
        return Err(Problem::not_found("key"));
    }
    state.catalog_changed().await;
    Ok(Json(record.into()))
}

async fn delete(state: &AdminState, tenant: &str, id: &str) -> ApiResult<StatusCode> {
    stored(state, tenant, id).await?;
    if !state.docs.delete_doc(Kind::ApiKeys, id).await? {
        return Err(Problem::not_found("key"));
    }
    state.catalog_changed().await;
    Ok(StatusCode::NO_CONTENT)
}

/// A new key with the old one's terms; the old one expires at the end of the overlap
/// (or sooner, if it was to expire sooner).
async fn roll(
    state: &AdminState,
    tenant: &str,
    id: &str,
    actor: &str,
    body: RollBody,
) -> ApiResult<(StatusCode, Json<RolledKey>)> {
    if !(0..=MAX_OVERLAP_SECS).contains(&body.overlap_secs) {
        return Err(Problem::invalid(
            "overlap_secs",
            format!("0 to {MAX_OVERLAP_SECS} seconds"),
        ));
    }
    let mut old = stored(state, tenant, id).await?;
    if old.disabled || old.expires_at_ms.is_some_and(|at| at <= now_ms()) {
        return Err(Problem::conflict(
            "key_id",
            "a disabled or expired key is not rolled; make a new one",
        ));
    }
    check_room(state, tenant).await?;
    let template = KeyRecord {
        created_by: actor.to_owned(),
        rolled_from: Some(old.id.clone()),
        // The month's spend goes on counting against the same budget.
        budget_id: Some(old.budget_id.clone().unwrap_or_else(|| old.id.clone())),
        expires_at_ms: old.expires_at_ms,
        disabled: false,
        ..old.clone()
    };
    // The new key first: a failure between the two writes leaves both keys working, never
    // neither.
    let created = issue(state, template).await?;
    let end = now_ms().saturating_add(body.overlap_secs.saturating_mul(1000));
    old.expires_at_ms = Some(old.expires_at_ms.map_or(end, |at| at.min(end)));
    if !state.docs.replace_doc(Kind::ApiKeys, &to_doc(&old)).await? {
        return Err(Problem::not_found("key"));
    }
    state.catalog_changed().await;
    let rolled = RolledKey {
        created,
        previous: old.into(),
    };
    Ok((StatusCode::CREATED, Json(rolled)))
}

async fn check_room(state: &AdminState, tenant: &str) -> ApiResult<()> {
    let held = state
        .docs
        .docs(Kind::ApiKeys, Some(("tenant_id", tenant)))
        .await?
        .len();
    if held >= MAX_KEYS_PER_TENANT {
        return Err(Problem::new(
            409,
            "too-many-keys",
            "Conflict",
            format!("a tenant holds at most {MAX_KEYS_PER_TENANT} keys; delete one first"),
        ));
    }
    Ok(())
}

async fn check_services(state: &AdminState, services: &[String]) -> ApiResult<()> {
    if services.is_empty() || services.len() > MAX_KEY_SERVICES {
        return Err(Problem::invalid(
            "services",
            format!("1 to {MAX_KEY_SERVICES} service names; leave it out for every service"),
        ));
    }
    for (i, name) in services.iter().enumerate() {
        let known = tollgate::vocab::is_valid_service_name(name)
            && state.docs.doc(Kind::Services, name).await?.is_some();
        if !known {
            return Err(Problem::invalid(
                format!("services[{i}]"),
                "no such service",
            ));
        }
    }
    Ok(())
}

fn check_budget(budget: i64) -> ApiResult<()> {
    if !(0..=MAX_BALANCE).contains(&budget) {
        return Err(Problem::invalid("budget", format!("0 to {MAX_BALANCE}")));
    }
    Ok(())
}
