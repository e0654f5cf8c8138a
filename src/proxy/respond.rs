//! Responses the gateway writes itself: RFC 9457 problem documents, never HTML.
//!
//! They are written header + body by hand rather than with `respond_error`, which would
//! close the client connection: a 402 or 401 keeps the connection alive (FIELD-NOTES).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Map, Value};

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
