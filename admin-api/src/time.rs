//! Times: RFC 3339 in UTC on the wire (read by [`crate::extract::time_param`]), billing
//! periods and calendar months.

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};

pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn now_ms() -> i64 {
    tollgate::store::now_ms()
}

/// The billing period (`YYYY-MM`, UTC) of `ms`.
pub fn period_of(ms: i64) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    format!("{:04}-{:02}", t.year(), t.month())
}

/// The day of the month (UTC) of `ms`.
pub fn day_of(ms: i64) -> u32 {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .day()
}

/// The calendar month (UTC) around `now_ms`: `[start, end)`.
pub fn month_of(now_ms: i64) -> (i64, i64) {
    let now = Utc
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_default();
    let start = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let end = Utc
        .with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    (start.timestamp_millis(), end.timestamp_millis())
}
