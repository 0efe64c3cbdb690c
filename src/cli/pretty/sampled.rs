//! The tables of the 1 s sampler's batches: a spike snapshot (what fired, the sessions with their
//! correlation IDs) and a window's `pg_activity_samples` (average active sessions per group).

use std::fmt::Write as _;

use serde_json::Value;

use super::{ms, plural, table, text, top, wait};

/// The correlation ID of a record, or `-`.
fn correlation(r: &Value) -> String {
    match r["correlation"]["id"].as_str() {
        Some(id) => id.to_string(),
        None => "-".to_string(),
    }
}

/// A load spike: what fired, then the sessions of the snapshot (longest first) with their
/// correlation IDs, and how many locks waited.
pub(super) fn spike(out: &mut String, batch: &Value, data: &[Value], width: usize) {
    let locks = batch["locks"]["waiting_locks"]
        .as_array()
        .map_or(0, Vec::len);
    let _ = write!(
        out,
        "  trigger {} = {} (threshold {}), {}",
        text(&batch["trigger"]),
        text(&batch["trigger_value"]),
        text(&batch["trigger_threshold"]),
        plural(locks, "waiting lock", "waiting locks"),
    );
    let (rows, more) = top(data, "query_duration_ms");
    let rows = rows
        .into_iter()
        .map(|r| {
            vec![
                text(&r["pid"]),
                text(&r["state"]),
                wait(r),
                ms(&r["query_duration_ms"]),
                correlation(r),
                text(&r["query"]),
            ]
        })
        .collect();
    table(
        out,
        &["PID", "STATE", "WAIT", "TIME", "CORRELATION", "QUERY"],
        rows,
        width,
        more,
    );
}

/// The 1 s samples of a window: average active sessions, then the busiest groups.
pub(super) fn samples(out: &mut String, batch: &Value, data: &[Value], width: usize) {
    let _ = write!(
        out,
        "  {} taken, {} active on average, {} at most",
        plural(batch["samples"].as_u64().unwrap_or(0), "sample", "samples"),
        batch["avg_active_sessions"]
            .as_f64()
            .map_or("-".to_string(), |a| format!("{a:.2}")),
        text(&batch["max_active_sessions"]),
    );
    let (rows, more) = top(data, "avg_active_sessions");
    let rows = rows
        .into_iter()
        .map(|r| {
            vec![
                r["avg_active_sessions"]
                    .as_f64()
                    .map_or("-".to_string(), |a| format!("{a:.2}")),
                text(&r["peak_sessions"]),
                text(&r["state"]),
                wait(r),
                text(&r["query"]),
            ]
        })
        .collect();
    table(
        out,
        &["AAS", "PEAK", "STATE", "WAIT", "QUERY"],
        rows,
        width,
        more,
    );
}
