//! Every error the admin API answers with: `application/problem+json` (RFC 9457) with the
//! same `urn:tollgate:problem:<kind>` types as the gateway, and `field` naming the part of
//! the request at fault.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// The request field at fault (`endpoints[1].credits`), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, kind: &str, title: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            kind: format!("urn:tollgate:problem:{kind}"),
            title,
            status,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 422: a well-formed request whose `field` is not acceptable.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let mut error = ApiError::new(422, "invalid-field", "Invalid request field", detail);
        error.field = Some(field.into());
        error
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::new(400, "bad-request", "Bad request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        ApiError::new(401, "unauthorized", "Unauthorized", detail)
    }

    pub fn forbidden() -> Self {
        ApiError::new(
            403,
            "forbidden",
            "Forbidden",
            "this route needs the admin role",
        )
    }

    /// 404, also for another tenant's data (ids cannot be probed).
    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(
            404,
            "not-found",
            "Not found",
            format!("no such {}", what.into()),
        )
    }

    pub fn conflict(field: &str, detail: impl Into<String>) -> Self {
        let mut error = ApiError::new(409, "conflict", "Conflict", detail);
        error.field = Some(field.to_owned());
        error
    }

    pub fn too_many(retry_after_secs: u64) -> Self {
        let mut error = ApiError::new(
            429,
            "too-many-attempts",
            "Too many attempts",
            "too many failed logins for this account; retry later",
        );
        error.retry_after = Some(retry_after_secs);
        error
    }

    /// 503: a backend (ledger, store) did not answer; the cause goes to the log only.
    pub fn unavailable(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::warn!(backend = what, error = %cause, "admin API backend unavailable");
        let mut error = ApiError::new(
            503,
            "backend-unavailable",
            "Service unavailable",
            format!("the {what} is unavailable; nothing was changed, retry shortly"),
        );
        error.retry_after = Some(1);
        error
    }

    /// 503 for a change that is recorded but not finished (a backend did not answer): it
    /// will be finished; a retry with the same `Idempotency-Key` returns its result.
    pub fn pending(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::warn!(backend = what, error = %cause, "change recorded, not finished yet");
        let mut error = ApiError::new(
            503,
            "change-pending",
            "Service unavailable",
            format!(
                "the {what} is unavailable; the change is recorded and will be applied once \
                 (retry with the same Idempotency-Key for its result)"
            ),
        );
        error.retry_after = Some(1);
        error
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl From<tollgate::store::StoreError> for ApiError {
    fn from(e: tollgate::store::StoreError) -> Self {
        ApiError::unavailable("store", e)
    }
}

impl From<tollgate::ledger::LedgerError> for ApiError {
    fn from(e: tollgate::ledger::LedgerError) -> Self {
        ApiError::unavailable("ledger", e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<crate::billing::BillingError> for ApiError {
    fn from(e: crate::billing::BillingError) -> ApiError {
        use crate::billing::BillingError;
        match e {
            BillingError::OutOfRange { field, .. } => ApiError::invalid(field, e.to_string()),
            BillingError::KeyReused => ApiError::new(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                e.to_string(),
            )
            .with_field("Idempotency-Key"),
            BillingError::Invalid { field, detail } => ApiError::invalid(field, detail),
            BillingError::Conflict { field, detail } => ApiError::conflict(field, detail),
            BillingError::Pending(cause) => ApiError::pending("ledger", cause),
            BillingError::Store(e) => e.into(),
        }
    }
}
