//! The wall clock as the agent writes it: Unix milliseconds and RFC 3339 UTC with milliseconds.
//!
//! A leaf with no dependency on the rest of the crate. It does not schedule anything (the cycle
//! timer is `daemon::schedule`) and reads timestamps back only as Unix seconds ([`unix_seconds`]).

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The current time as RFC 3339 UTC with milliseconds, e.g. `2026-11-27T00:18:00.088Z`.
pub fn now_rfc3339() -> String {
    format_rfc3339(time::OffsetDateTime::now_utc())
}

/// Formats a timestamp as RFC 3339 UTC with milliseconds.
pub fn format_rfc3339(t: time::OffsetDateTime) -> String {
    const FMT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(FMT)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// `rfc3339` as Unix seconds with a fractional part.
pub fn unix_seconds(rfc3339: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}
