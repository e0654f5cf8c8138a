//! Responses the gateway writes itself: the problem documents of [`crate::problem`] (never
//! HTML), and the ones only the request path answers with.
//!
//! They are written header + body by hand rather than with `respond_error`, which would
//! close the client connection: a 402 or 401 keeps the connection alive.

use crate::problem::Problem;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// `Retry-After` on a 503 from an unavailable ledger: a retry a second later usually
/// finds Redis failed over or reconnected.
const LEDGER_RETRY_AFTER_SECS: u32 = 1;

impl Problem {
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

    /// Step 3's `402` for an API key past its monthly budget: the tenant's other keys go
    /// on (docs/DESIGN.md §API keys).
    pub fn over_budget(key_id: &str, budget: i64, spent: i64, cost: i64) -> Self {
        let detail = format!(
            "this API key's monthly budget is {budget} credits, {spent} are spent, and this call costs {cost}"
        );
        Problem::new(
            402,
            "key-budget-exhausted",
            "API key budget exhausted",
            detail,
        )
        .with("key_id", key_id)
        .with("budget", budget)
        .with("spent", spent)
        .with("cost", cost)
        .header("x-credits-cost", cost)
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

    /// Writes the whole response. The caller then returns `Ok(true)` from `request_filter`
    /// (the response is already written) or reports the status from `fail_to_proxy`.
    pub async fn send(&self, session: &mut Session, request_id: &str) -> Result<()> {
        let body = self.body();
        let mut header = ResponseHeader::build(self.status, Some(4 + self.headers.len()))?;
        header.insert_header("content-type", crate::problem::CONTENT_TYPE)?;
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
