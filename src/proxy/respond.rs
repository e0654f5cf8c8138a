//! Responses the gateway writes itself: RFC 9457 problem documents, never HTML.
//!
//! They are written header + body by hand rather than with `respond_error`, which would
//! close the client connection: a 402 or 401 keeps the connection alive (FIELD-NOTES).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Map, Value};

/// `Retry-After` on a 503 from an unavailable ledger: a retry a second later usually
/// finds Redis failed over or reconnected.
const LEDGER_RETRY_AFTER_SECS: u32 = 1;

/// A problem document (RFC 9457) plus the headers that go with it.
#[derive(Debug)]
pub struct Problem {
    pub status: u16,
    /// The last part of the `type` URN, e.g. `insufficient-credits`.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Extension members (`tenant_id`, `balance`, `cost` on a 402).
    pub extra: Map<String, Value>,
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
            extra: Map::new(),
            headers: Vec::new(),
        }
    }

    /// Step 2's `401` (RFC 6750: the token is missing, malformed, expired or revoked).
    pub fn invalid_token(detail: impl Into<String>) -> Self {
        Problem::new(401, "unauthorized", "Unauthorized", detail)
            .header("www-authenticate", "Bearer error=\"invalid_token\"")
    }

    /// Step 3's `402`: what the call costs and what the tenant has.
    pub fn insufficient_credits(tenant_id: &str, cost: i64, balance: i64) -> Self {
        let detail = format!("this call costs {cost} credits and the balance is {balance}");
        Problem::new(402, "insufficient-credits", "Insufficient credits", detail)
            .with("tenant_id", tenant_id)
            .with("balance", balance)
            .with("cost", cost)
            .header("x-credits-cost", cost)
            .header("x-credits-remaining", balance)
    }

    /// Step 3's `503`: the ledger did not answer in time (fail closed).
    pub fn ledger_unavailable() -> Self {
        Problem::new(
            503,
            "ledger-unavailable",
            "Service unavailable",
            "the credit ledger is unavailable; retry shortly",
        )
        .header("retry-after", LEDGER_RETRY_AFTER_SECS)
    }

    /// The answer to a proxy error that `fail_to_proxy` mapped to `code`.
    pub fn for_proxy_error(code: u16) -> Self {
        match code {
            502 => Problem::new(
                502,
                "upstream-unreachable",
                "Bad gateway",
                "the upstream could not be reached",
            ),
            504 => Problem::new(
                504,
                "upstream-timeout",
                "Gateway timeout",
                "the upstream did not answer in time",
            ),
            408 => Problem::new(
                408,
                "client-timeout",
                "Request timeout",
                "the request body did not arrive in time",
            ),
            400 => Problem::new(
                400,
                "bad-request",
                "Bad request",
                "the request could not be read",
            ),
            _ => Problem::new(
                code,
                "internal",
                "Gateway error",
                "the gateway could not complete the request",
            ),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn header(mut self, name: &'static str, value: impl ToString) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    pub fn body(&self) -> Bytes {
        let mut body = json!({
            "type": format!("urn:tollgate:problem:{}", self.kind),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        });
        if let Value::Object(map) = &mut body {
            map.extend(self.extra.clone());
        }
        Bytes::from(body.to_string())
    }

    /// Writes the whole response. The caller then returns `Ok(true)` from `request_filter`
    /// (the response is already written) or reports the status from `fail_to_proxy`.
    pub async fn send(&self, session: &mut Session, request_id: &str) -> Result<()> {
        let body = self.body();
        let mut header = ResponseHeader::build(self.status, Some(4 + self.headers.len()))?;
        header.insert_header("content-type", "application/problem+json")?;
        header.insert_header("content-length", body.len())?;
        header.insert_header("x-request-id", request_id)?;
        for (name, value) in &self.headers {
            header.insert_header(*name, value)?;
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(header), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}
