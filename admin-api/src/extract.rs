//! Request extractors: the JSON body (refusing what is not JSON, too large, or has unknown or
//! ill-typed fields, always naming the field) and the authenticated caller.

use crate::problem::Problem;
use crate::records::UserDoc;
use crate::session;
use crate::AdminState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use tollgate::auth::{AuthError, Claims, Role};

/// The largest request body accepted (the admin API's bodies are small documents).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON request body. Errors: 415 (not `application/json`), 413 (too large), 400 (not
/// JSON), 422 (a field missing, unknown or of the wrong type, named in `field`).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Problem::new(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|_| {
            Problem::new(
                413,
                "body-too-large",
                "Payload too large",
                format!("the body must be at most {MAX_BODY_BYTES} bytes"),
            )
        })?;
        parse(&bytes).map(Body)
    }
}

/// Deserializes `bytes`: `400` when they are not JSON at all; otherwise `422` naming the
/// field serde refused. A whole number written as a float (`3.0`, which JSON Schema counts
/// as an integer) is taken as that integer.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))?;
    whole_numbers_as_integers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        refused(&path, &e.into_inner().to_string(), "body")
    })
}

/// A problem naming the field serde refused at `path` (`.` for the whole `what`).
fn refused(path: &str, message: &str, what: &str) -> Problem {
    // A missing, repeated or unknown field is reported at its parent: name the field itself.
    let named = ["missing field `", "duplicate field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix));
    let field = match named {
        Some(rest) => {
            let name = rest.split('`').next().unwrap_or(rest);
            // An unknown field's path already ends in it; a missing one's is its parent's.
            let own = path == name || path.ends_with(&format!(".{name}"));
            if path == "." {
                name.to_owned()
            } else if own {
                path.to_owned()
            } else {
                format!("{path}.{name}")
            }
        }
        None if path == "." => what.to_owned(),
        None => path.to_owned(),
    };
    Problem::invalid(field, message)
}

fn whole_numbers_as_integers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                // Within i64 (2^63 is exact as an f64, and out of range).
                const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
                if f.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&f) {
                    *value = serde_json::Value::from(f as i64);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(whole_numbers_as_integers)
        }
        _ => {}
    }
}

/// Query parameters. A parameter of the wrong type, repeated or unknown where the handler
/// refuses unknown ones is a `422` naming it (axum's own `Query` answers plain text).
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| {
                let path = e.path().to_string();
                refused(&path, &e.into_inner().to_string(), "query")
            })
    }
}

/// The verified token of the caller (any role), still true of its user: when the token
/// names a stored user, that user is not disabled, still has the token's role and tenant,
/// and was not changed after the token was issued. So disabling, demoting or moving a user
/// ends the admin API's trust in the tokens issued before, at once and for good (tokens the
/// operator mints for ids with no account, `tollgate token`, stand on their signature
/// alone). Every authenticated route therefore reads the store: while it is down they
/// answer `503`. The stored user comes along, so a handler need not read it again.
pub struct Caller(pub Claims, pub Option<UserDoc>);

impl FromRequestParts<AdminState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, Problem> {
        // The console's session cookie stands for the header (docs/DESIGN.md §Console):
        // the same token, verified the same way, plus the CSRF check when it changes state.
        let from_cookie = match parts.headers.get(AUTHORIZATION) {
            Some(_) => None,
            None => session::cookie(&parts.headers, session::SESSION_COOKIE)
                .map(|token| format!("Bearer {token}")),
        };
        if let Some(bearer) = &from_cookie {
            if session::changes_state(&parts.method) {
                let token = bearer.trim_start_matches("Bearer ");
                session::check_csrf(&parts.headers, &session::csrf_for(token))?;
            }
        }
        let header = match &from_cookie {
            Some(bearer) => Some(bearer.as_bytes()),
            None => parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes()),
        };
        let verified = state.verifier.verify_header_refreshing(header).await;
        let claims = verified.map_err(|e| {
            Problem::unauthorized(match e {
                AuthError::Missing => "missing bearer token".to_owned(),
                AuthError::Malformed => "malformed Authorization header".to_owned(),
                AuthError::Invalid(why) => format!("invalid token: {why}"),
                AuthError::Key(_) => "invalid token".to_owned(),
                AuthError::UnknownKid => {
                    "invalid token: the identity provider publishes no key with this kid".to_owned()
                }
            })
        })?;
        let user = crate::records::user(&*state.docs, &claims.sub).await?;
        if let Some(user) = &user {
            if user.disabled {
                return Err(Problem::unauthorized("this user is disabled"));
            }
            let stale = user
                .tokens_valid_after_ms
                .is_some_and(|after| claims.issued_at_ms() < after);
            if stale || user.role != claims.role || user.tenant_id != claims.tenant_id {
                return Err(Problem::unauthorized(
                    "this token predates a change of its user's role or tenant; log in again",
                ));
            }
        }
        Ok(Caller(std::sync::Arc::unwrap_or_clone(claims), user))
    }
}

/// A caller with the `admin` role; a `user` token gets 403.
pub struct Admin(pub Claims);

impl FromRequestParts<AdminState> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, Problem> {
        let Caller(claims, _) = Caller::from_request_parts(parts, state).await?;
        if claims.role != Role::Admin {
            return Err(Problem::forbidden());
        }
        Ok(Admin(claims))
    }
}

/// Tells "absent" (`None`) from "null" (`Some(None)`) in a PATCH body.
pub fn double_option<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// Parses a query parameter `field` as RFC 3339 or unix milliseconds.
pub fn time_param(field: &str, value: &str) -> Result<i64, Problem> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| Problem::invalid(field, "an RFC 3339 time or unix milliseconds"))
}
