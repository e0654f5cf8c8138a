//! The web console (docs/DESIGN.md §Console): one page and its script, style and chart
//! library, compiled into the binary and served on `admin_listen` at `/console`, and the
//! cookie session it signs in with. The page is a client of this same admin API: every
//! figure it shows and every change it makes goes through the routes (and so the
//! authorization) an API client uses; this module only serves files and turns a sign-in
//! into cookies (docs: `session`).

use crate::auth::{sign_in, Login};
use crate::extract::{Body, Caller};
use crate::problem::{ApiResult, Problem};
use crate::session::{self, CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE};
use crate::AdminState;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tollgate::auth::Role;

/// Scripts, styles and connections from this origin only; no inline code, no frames, no
/// plugins; forms post here only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const INDEX: &str = include_str!("../console/index.html");

/// The compiled-in files: (name under /console/assets/, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/app.css"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/vendor/uPlot.min.css"),
    ),
];

pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/", get(|| async { redirect() }))
        .route("/console", get(|| async { redirect() }))
        .route("/console/", get(page))
        .route("/console/assets/{*file}", get(asset))
        .route(
            "/console/session",
            axum::routing::post(create_session).delete(end_session),
        )
        .route("/console/{*path}", get(page))
}

fn redirect() -> Response {
    (StatusCode::FOUND, [(LOCATION, "/console/")]).into_response()
}

/// The headers every console answer carries.
fn harden(headers: &mut HeaderMap) {
    let fixed: [(HeaderName, &str); 5] = [
        (HeaderName::from_static("content-security-policy"), CSP),
        (HeaderName::from_static("x-content-type-options"), "nosniff"),
        (HeaderName::from_static("referrer-policy"), "no-referrer"),
        (HeaderName::from_static("x-frame-options"), "DENY"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// The page, for every console path (the script draws the view the path names). A path
/// under `/console/admin/` asked with a session that is not an admin's gets `403` and the
/// page told so: the page holds no data, but nor is it served as if allowed.
async fn page(State(state): State<AdminState>, request: axum::extract::Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let admin_page = parts.uri.path().starts_with("/console/admin");
    let signed_in = session::cookie(&parts.headers, SESSION_COOKIE).is_some();
    let mut status = StatusCode::OK;
    let mut html = std::borrow::Cow::Borrowed(INDEX);
    if admin_page && signed_in {
        let role = Caller::from_request_parts(&mut parts, &state)
            .await
            .map(|Caller(claims, _)| claims.role);
        if matches!(role, Ok(Role::User)) {
            status = StatusCode::FORBIDDEN;
            html = INDEX
                .replacen("<body", "<body data-forbidden=\"1\"", 1)
                .into();
        }
    }
    let mut response = (status, html.into_owned()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    harden(headers);
    if session::cookie(&parts.headers, CSRF_COOKIE).is_none() {
        // A browser that has not signed in gets the token its sign-in post must echo.
        let secure = session::over_tls(&parts.headers);
        let cookies = session::set_cookies(None, 0, secure);
        if let Some(csrf) = cookies.into_iter().nth(1) {
            headers.append(axum::http::header::SET_COOKIE, csrf);
        }
    }
    response
}

async fn asset(Path(file): Path<String>) -> Response {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return Problem::new(404, "not-found", "Not found", "no such console file").into_response();
    };
    let mut response = bytes.to_vec().into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on each load: a new binary's files are seen at once.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    harden(headers);
    response
}

#[derive(Debug, Serialize)]
struct SessionView {
    user_id: String,
    email: String,
    tenant_id: String,
    role: &'static str,
}

/// Signs in with the same accounts, lock and token as `POST /auth/login`; the token goes
/// into the `HttpOnly` session cookie, never to the page. The post must echo the random
/// `tg_csrf` cookie the page set (a sign-in form on another site cannot).
async fn create_session(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Body(login): Body<Login>,
) -> ApiResult<Response> {
    let expected = session::cookie(&headers, CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() {
        return Err(session::check_csrf(&headers, "\0").unwrap_err());
    }
    session::check_csrf(&headers, expected)?;
    let (token, user) = sign_in(&state, login).await?;
    let view = SessionView {
        user_id: user.id,
        email: user.email,
        tenant_id: user.tenant_id,
        role: match user.role {
            Role::Admin => "admin",
            Role::User => "user",
        },
    };
    let mut response = Json(view).into_response();
    let cookies = session::set_cookies(
        Some(&token.access_token),
        token.expires_in,
        session::over_tls(&headers),
    );
    session::append_cookies(response.headers_mut(), cookies);
    harden(response.headers_mut());
    Ok(response)
}

/// Signs out: the cookies are cleared. The token itself stays valid until it expires
/// (`admin.token_ttl_secs`), as a token from `/auth/login` does; the browser no longer
/// holds it.
async fn end_session(headers: HeaderMap) -> ApiResult<Response> {
    if let Some(token) = session::cookie(&headers, SESSION_COOKIE) {
        session::check_csrf(&headers, &session::csrf_for(token))?;
    } else if headers.get(CSRF_HEADER).is_none() {
        return Err(session::check_csrf(&headers, "\0").unwrap_err());
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let cookies = session::set_cookies(None, 0, session::over_tls(&headers));
    session::append_cookies(response.headers_mut(), cookies);
    harden(response.headers_mut());
    Ok(response)
}
