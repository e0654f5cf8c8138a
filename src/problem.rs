//! The one problem document (RFC 9457, `application/problem+json`) that the gateway and the
//! admin API answer every error with: `type` is `urn:tollgate:problem:<kind>`, `field` names
//! the part of the request at fault when one is, extension members carry the facts (a
//! 402's `balance` and `cost`), and the headers that go with it (`WWW-Authenticate`,
//! `Retry-After`) travel along. Built here, once; the gateway writes it through Pingora
//! (`proxy::respond`), the admin API through axum ([`IntoResponse`]).

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value};

pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem document plus the headers that go with it.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: u16,
    /// The last part of the `type` URN, e.g. `insufficient-credits`.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Extension members, in order: `field` (the request field at fault, when one is:
    /// `endpoints[1].credits`, `Idempotency-Key`), a 402's `tenant_id`, `balance`, `cost`.
    pub extra: Vec<(&'static str, Value)>,
    pub headers: Vec<(&'static str, String)>,
}

impl Problem {
    pub fn new(
        status: u16,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            extra: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// 422: a well-formed request whose `field` is not acceptable.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Problem::new(422, "invalid-field", "Invalid request field", detail).with_field(field)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(400, "bad-request", "Bad request", detail)
    }

    /// 401 (RFC 6750: the token is missing, malformed, expired or revoked).
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Problem::new(401, "unauthorized", "Unauthorized", detail)
            .header("www-authenticate", "Bearer error=\"invalid_token\"")
    }

    pub fn forbidden() -> Self {
        Problem::new(
            403,
            "forbidden",
            "Forbidden",
            "this route needs the admin role",
        )
    }

    /// 404, also for another tenant's data (ids cannot be probed).
    pub fn not_found(what: impl Into<String>) -> Self {
        Problem::new(
            404,
            "not-found",
            "Not found",
            format!("no such {}", what.into()),
        )
    }

    pub fn conflict(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Problem::new(409, "conflict", "Conflict", detail).with_field(field)
    }

    pub fn too_many_attempts(retry_after_secs: u64) -> Self {
        Problem::new(
            429,
            "too-many-attempts",
            "Too many attempts",
            "too many failed logins for this account; retry later",
        )
        .header("retry-after", retry_after_secs)
    }

    /// 503: a backend (ledger, store) did not answer; the cause goes to the log only.
    pub fn unavailable(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::warn!(backend = what, error = %cause, "backend unavailable");
        Problem::new(
            503,
            "backend-unavailable",
            "Service unavailable",
            format!("the {what} is unavailable; nothing was changed, retry shortly"),
        )
        .header("retry-after", 1)
    }

    /// 503 for a change that is recorded but not finished (a backend did not answer): it
    /// will be finished; a retry with the same `Idempotency-Key` returns its result.
    pub fn pending(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::warn!(backend = what, error = %cause, "change recorded, not finished yet");
        Problem::new(
            503,
            "change-pending",
            "Service unavailable",
            format!(
                "the {what} is unavailable; the change is recorded and will be applied once \
                 (retry with the same Idempotency-Key for its result)"
            ),
        )
        .header("retry-after", 1)
    }

    /// Names the request field at fault (the `field` member), replacing any named before.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.extra.retain(|(key, _)| *key != "field");
        self.with("field", field.into())
    }

    /// The request field at fault, if the problem names one.
    pub fn field(&self) -> Option<&str> {
        self.extra
            .iter()
            .find(|(key, _)| *key == "field")
            .and_then(|(_, value)| value.as_str())
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.extra.push((key, value.into()));
        self
    }

    pub fn header(mut self, name: &'static str, value: impl ToString) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    /// The JSON document.
    pub fn body(&self) -> Bytes {
        let mut body = Map::with_capacity(5 + self.extra.len());
        body.insert(
            "type".into(),
            format!("urn:tollgate:problem:{}", self.kind).into(),
        );
        body.insert("title".into(), self.title.into());
        body.insert("status".into(), self.status.into());
        body.insert("detail".into(), self.detail.clone().into());
        for (key, value) in &self.extra {
            body.insert((*key).to_owned(), value.clone());
        }
        Bytes::from(Value::Object(body).to_string())
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.field() {
            Some(field) => write!(f, "{}: {}", field, self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE),
        );
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_its_type_field_and_extensions() {
        let problem = Problem::invalid("endpoints[1].credits", "at most 1000000").with("max", 1);
        let body: Value = serde_json::from_slice(&problem.body()).unwrap();
        assert_eq!(body["type"], "urn:tollgate:problem:invalid-field");
        assert_eq!(body["status"], 422);
        assert_eq!(body["field"], "endpoints[1].credits");
        assert_eq!(body["max"], 1);
        let response = Problem::unauthorized("no token").into_response();
        assert_eq!(response.headers()["content-type"], CONTENT_TYPE);
        assert!(response.headers().contains_key("www-authenticate"));
    }
}
