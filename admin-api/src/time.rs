//! Times on the wire: RFC 3339 in UTC out; RFC 3339 or unix milliseconds in.

use crate::problem::ApiError;
use chrono::{DateTime, SecondsFormat, Utc};

pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a query parameter `field` as RFC 3339 or unix milliseconds.
pub fn parse(field: &str, value: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| ApiError::invalid(field, "an RFC 3339 time or unix milliseconds"))
}

pub fn now_ms() -> i64 {
    tollgate::store::now_ms()
}
