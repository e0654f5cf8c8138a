//! Users: the accounts that log in. Stored in `users` (docs/DESIGN.md §Data model) with an argon2id hash that
//! never leaves the store.

use crate::extract::Query;
use crate::extract::{Admin, Body};
use crate::problem::{ApiResult, Problem, ProblemSchema};
use crate::records::UserDoc;
use crate::time::rfc3339;
use crate::AdminState;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use tollgate::auth::Role;
use tollgate::store::{Doc, Kind};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `/admin/users` and `/admin/users/{id}`.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get, update))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    id: String,
    email: String,
    tenant_id: String,
    #[schema(value_type = String, example = "user")]
    role: Role,
    disabled: bool,
    created_at: String,
    last_login_at: Option<String>,
}

impl From<&UserDoc> for UserView {
    fn from(u: &UserDoc) -> Self {
        UserView {
            id: u.id.clone(),
            email: u.email.clone(),
            tenant_id: u.tenant_id.clone(),
            role: u.role,
            disabled: u.disabled,
            created_at: rfc3339(u.created_at_ms),
            last_login_at: u.last_login_at_ms.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    items: Vec<UserView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserFilter {
    /// Only this tenant's users.
    tenant_id: Option<String>,
}

/// Lists users (at most 1,000), optionally of one tenant.
#[utoipa::path(get, path = "/admin/users", tag = "users", params(UserFilter),
    security(("bearer" = [])), responses((status = 200, body = UserList)))]
pub async fn list(
    State(state): State<AdminState>,
    _admin: Admin,
    Query(filter): Query<UserFilter>,
) -> ApiResult<Json<UserList>> {
    let filter = filter.tenant_id.as_deref().map(|t| ("tenant_id", t));
    let docs = state.docs.docs(Kind::Users, filter).await?;
    let users = docs
        .into_iter()
        .map(UserDoc::from_doc)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(UserList {
        items: users.iter().map(UserView::from).collect(),
    }))
}

#[utoipa::path(get, path = "/admin/users/{id}", tag = "users",
    params(("id" = String, Path, description = "user id")),
    security(("bearer" = [])), responses((status = 200, body = UserView), (status = 404, body = ProblemSchema)))]
pub async fn get(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<UserView>> {
    let user = crate::records::user(&*state.docs, &id)
        .await?
        .ok_or_else(|| Problem::not_found("user"))?;
    Ok(Json(UserView::from(&user)))
}

/// A user's role, as the document shows it.
#[derive(ToSchema)]
#[schema(as = Role)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // described, never built: the body holds tollgate::auth::Role
pub enum RoleSchema {
    User,
    Admin,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[schema(value_type = Option<RoleSchema>, example = "admin")]
    role: Option<Role>,
    /// Move the user to another (existing) tenant.
    tenant_id: Option<String>,
    /// A disabled user cannot log in.
    disabled: Option<bool>,
}

/// Changes a user's role, tenant or disabled flag. The admin API stops honouring the
/// user's earlier tokens at once (see [`crate::extract::Caller`]), every gateway replica
/// with its next catalog reload.
#[utoipa::path(patch, path = "/admin/users/{id}", tag = "users",
    params(("id" = String, Path, description = "user id")), request_body = UserPatch,
    security(("bearer" = [])), responses((status = 200, body = UserView), (status = 404, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn update(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
    Body(patch): Body<UserPatch>,
) -> ApiResult<Json<UserView>> {
    let mut user = crate::records::user(&*state.docs, &id)
        .await?
        .ok_or_else(|| Problem::not_found("user"))?;
    let before = (user.tenant_id.clone(), user.role, user.disabled);
    if let Some(tenant) = &patch.tenant_id {
        if state.store.tenant(tenant).await?.is_none() {
            return Err(Problem::invalid("tenant_id", "no such tenant"));
        }
        user.tenant_id = tenant.clone();
    }
    if let Some(role) = patch.role {
        user.role = role;
    }
    if let Some(disabled) = patch.disabled {
        user.disabled = disabled;
    }
    // A change ends every token issued before it.
    let changed = before != (user.tenant_id.clone(), user.role, user.disabled);
    if changed {
        user.tokens_valid_after_ms = Some(crate::time::now_ms().max(0) as u64);
    }
    // Only the fields this request names (and the revocation time when it changed
    // anything): a concurrent login or PATCH of other fields is neither undone nor undoes.
    let all = user.to_doc();
    let named = [
        ("tenant_id", patch.tenant_id.is_some()),
        ("role", patch.role.is_some()),
        ("disabled", patch.disabled.is_some()),
        ("tokens_valid_after_ms", changed),
    ];
    let fields: Doc = named
        .into_iter()
        .filter(|(_, named)| *named)
        .filter_map(|(k, _)| Some((k.to_owned(), all.get(k).filter(|v| !v.is_null())?.clone())))
        .collect();
    if !state.docs.update_doc(Kind::Users, &id, &fields).await? {
        return Err(Problem::not_found("user"));
    }
    if changed {
        // Every gateway replica reloads its revocations with the catalog.
        state.catalog_changed().await;
    }
    Ok(Json(UserView::from(&user)))
}
