//! Rate and concurrency limits as the admin API takes and shows them (docs/DESIGN.md
//! §Limits): on a plan, on a tenant (over its plan's), on an API key.

use crate::problem::{ApiResult, Problem};
pub use crate::records::RateLimitBody;
use tollgate::vocab::{Limits, RateLimit, MAX_LIMIT};

/// Limits from a body's `rate_limit` and `max_concurrent`, checked (`422` naming the field).
pub fn limits(rate: Option<RateLimitBody>, max_concurrent: Option<u32>) -> ApiResult<Limits> {
    let rate_limit = rate.map(RateLimit::from);
    if let Some(rate) = &rate_limit {
        rate.check().map_err(|why| {
            let field = why.split(':').next().unwrap_or("rate_limit");
            Problem::invalid(format!("rate_limit.{field}"), why)
        })?;
    }
    if max_concurrent.is_some_and(|m| !(1..=MAX_LIMIT).contains(&m)) {
        return Err(Problem::invalid("max_concurrent", "1 to 1000000"));
    }
    Ok(Limits {
        rate_limit,
        max_concurrent,
    })
}

/// A PATCH of limits: each field given replaces the one held (`null`: none).
pub fn patched(
    held: Limits,
    rate: Option<Option<RateLimitBody>>,
    max_concurrent: Option<Option<u32>>,
) -> ApiResult<Limits> {
    let rate = match rate {
        Some(rate) => rate,
        None => held.rate_limit.map(RateLimitBody::from),
    };
    let max_concurrent = match max_concurrent {
        Some(most) => most,
        None => held.max_concurrent,
    };
    limits(rate, max_concurrent)
}
