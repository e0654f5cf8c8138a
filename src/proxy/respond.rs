//! Responses the gateway writes itself: the problem documents of [`crate::problem`] (never
//! HTML), and the ones only the request path answers with.
//!
//! They are written header + body by hand rather than with `respond_error`, which would
//! close the client connection: a 402 or 401 keeps the connection alive.

use crate::ledger::Limiter;
use crate::problem::Problem;
use crate::vocab::RateLimit;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// `Retry-After` on a 503 from an unavailable ledger: a retry a second later usually
/// finds Redis failed over or reconnected.
const LEDGER_RETRY_AFTER_SECS: u32 = 1;

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) of the
/// policy `name`: its quota is its burst, over the seconds it takes to fill again; `r` the
/// calls that may still come at once, `t` the seconds until the quota is whole.
pub(super) fn rate_limit_headers(
    name: &str,
    rate: RateLimit,
    remaining: u32,
    reset_ms: u64,
) -> [(&'static str, String); 2] {
    let window = rate.burst.div_ceil(rate.requests_per_second.max(1)).max(1);
    [
        (
            "ratelimit-policy",
            format!("\"{name}\";q={};w={window}", rate.burst),
        ),
        (
            "ratelimit",
            format!("\"{name}\";r={remaining};t={}", reset_ms.div_ceil(1000)),
        ),
    ]
}

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

    /// Step 3's `429`: a rate or concurrency limit of `whose` (`tenant` or `key`) refused
    /// the call; nothing was charged (docs/DESIGN.md §Limits).
    pub fn rate_limited(
        whose: &str,
        limiter: &Limiter<'_>,
        concurrency: bool,
        retry_after_ms: u64,
    ) -> Self {
        let retry_secs = retry_after_ms.div_ceil(1000).max(1);
        let detail = match (concurrency, limiter.rate) {
            (true, _) => format!(
                "this {whose} allows {} calls in flight at once",
                limiter.max_concurrent.unwrap_or(0)
            ),
            (false, Some(rate)) => format!(
                "this {whose} allows {} requests per second (bursts of {})",
                rate.requests_per_second, rate.burst
            ),
            (false, None) => format!("this {whose}'s rate limit is reached"),
        };
        let mut problem = Problem::new(429, "rate-limited", "Too many requests", detail)
            .with("limit", whose.to_owned())
            .with("retry_after_ms", retry_after_ms)
            .header("retry-after", retry_secs);
        if let (false, Some(rate)) = (concurrency, limiter.rate) {
            for (name, value) in rate_limit_headers(whose, rate, 0, retry_after_ms) {
                problem = problem.header(name, value);
            }
        }
        problem
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
