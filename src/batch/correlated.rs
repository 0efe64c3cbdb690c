//! The correlated statement a record carries ([`Correlated`]): for a record with a correlation ID
//! (a session seen in pg_stat_activity or a spike snapshot, a lock waiter, a log entry with a
//! duration), the statement that ID belongs to, when it started, how long it ran and its text.
//!
//! Producers build it while their record is still typed ([`Correlated::session`],
//! [`Correlated::log_entry`]) and attach the list to the [`Batch`](super::Batch) (never serialized,
//! so the batch protocol's body does not change); the `bitville` encoder reads only that list. A
//! batch read back from stored JSON (a protocol switch re-encoding queued batch-protocol requests,
//! tests that build batches from JSON) gets its list from [`from_stored`], the one place that reads
//! these fields from record JSON by name.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{BatchKind, Record};
use crate::clock::unix_seconds;

/// One statement with a correlation ID, as the record that saw it describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Correlated {
    pub correlation_id: String,
    /// Unix seconds when it started.
    pub started: f64,
    pub duration_ms: Option<f64>,
    /// The statement text (already through the privacy policy, as in the record).
    pub query: Option<String>,
    /// pid and query start, for statements seen running (sent once).
    pub key: Option<(i64, String)>,
    /// What else the listener gets in `data`: pid, database, user, state, waits, fingerprint, the
    /// record's `correlation`, for a lock waiter its lock.
    pub detail: Map<String, Value>,
}

/// A session-like record (pg_activity, a spike's sessions, a lock waiter), typed by its producer.
pub struct Session<'r> {
    /// The record's `correlation`, serialized.
    pub correlation: Value,
    pub pid: i64,
    pub query_start: &'r str,
    /// How long its query has run (or ran); `None` for a lock waiter, whose statement has run
    /// since `query_start` until the batch was collected.
    pub query_duration_ms: Option<f64>,
    pub query: Option<&'r str>,
    pub running: bool,
    /// The record's own fields for `data` (see [`Detail`]).
    pub detail: Detail,
    /// A lock waiter's lock (locktype, mode, relation, how long it waits, blockers).
    pub lock: Option<Map<String, Value>>,
}

/// A log entry with a duration (`log_min_duration_statement`, auto_explain), typed by the log task.
pub struct LogStatement<'r> {
    /// The entry's `correlation`, serialized.
    pub correlation: Value,
    /// When it was logged (RFC 3339), which is when it ended.
    pub logged_at: &'r str,
    pub duration_ms: f64,
    /// The SQL text it carries (`logs::statement_of`, else auto_explain's `Query Text`).
    pub query: Option<&'r str>,
    pub detail: Detail,
}

/// The `data` fields of a correlated statement, null values left out.
#[derive(Debug, Default)]
pub struct Detail(pub Map<String, Value>);

impl Detail {
    /// Adds `value` as `key` unless it serializes to null.
    pub fn put<T: Serialize + ?Sized>(mut self, key: &str, value: &T) -> Detail {
        if let Ok(v) = serde_json::to_value(value) {
            if !v.is_null() {
                self.0.insert(key.to_string(), v);
            }
        }
        self
    }
}

/// The non-empty `id` of a serialized `correlation`.
fn id_of(correlation: &Value) -> Option<String> {
    correlation
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

impl Correlated {
    /// The statement of a session or lock waiter of a batch collected at `collected_at` (RFC 3339);
    /// `None` without a correlation ID or a readable `query_start`.
    pub fn session(s: Session<'_>, collected_at: &str) -> Option<Correlated> {
        let id = id_of(&s.correlation)?;
        let started = unix_seconds(s.query_start)?;
        let duration_ms = match s.query_duration_ms {
            Some(d) => Some(d),
            // A lock waiter: how long its statement has run so far.
            None => unix_seconds(collected_at).map(|now| ((now - started) * 1000.0).max(0.0)),
        };
        let mut detail = s.detail.0;
        detail.insert("running".into(), Value::from(s.running));
        if let Some(lock) = s.lock {
            detail.insert("lock".into(), Value::Object(lock));
        }
        detail.insert("correlation".into(), s.correlation);
        Some(Correlated {
            correlation_id: id,
            started,
            duration_ms,
            query: s.query.map(str::to_string),
            key: Some((s.pid, s.query_start.to_string())),
            detail,
        })
    }

    /// The statement of a log entry: it started its duration before it was logged.
    pub fn log_entry(e: LogStatement<'_>) -> Option<Correlated> {
        let id = id_of(&e.correlation)?;
        let ended = unix_seconds(e.logged_at)?;
        let mut detail = e.detail.0;
        detail.insert("running".into(), Value::from(false));
        detail.insert("correlation".into(), e.correlation);
        Some(Correlated {
            correlation_id: id,
            started: ended - e.duration_ms / 1000.0,
            duration_ms: Some(e.duration_ms),
            query: e.query.map(str::to_string),
            key: None,
            detail,
        })
    }
}

/// Rebuilds the correlated statements of stored records of `kind`, collected at `collected_at`,
/// from their JSON: what the producers attached while the records were typed, for a batch read
/// back from storage (or built from JSON). Kinds without correlated statements give none.
pub fn from_stored(kind: BatchKind, collected_at: &str, records: &[Record]) -> Vec<Correlated> {
    let mut out = Vec::new();
    for record in records.iter().filter(|r| r.has_correlation()) {
        let Ok(Value::Object(r)) = record.to_value() else {
            continue;
        };
        let statement = match kind {
            BatchKind::PgActivity | BatchKind::Locks | BatchKind::Spike => {
                stored_session(&r, kind, collected_at)
            }
            BatchKind::PgLogs => stored_log_entry(&r),
            BatchKind::PgStatements | BatchKind::SystemMetrics | BatchKind::PgActivitySamples => {
                None
            }
            BatchKind::PgDatabase
            | BatchKind::PgServerHealth
            | BatchKind::PgTables
            | BatchKind::PgSettings => None,
            BatchKind::PgPlans => None,
        };
        out.extend(statement);
    }
    out
}

fn copy(from: &Map<String, Value>, keys: &[(&str, &str)]) -> Detail {
    keys.iter()
        .fold(Detail::default(), |d, (src, dst)| match from.get(*src) {
            Some(v) => d.put(dst, v),
            None => d,
        })
}

fn stored_session(
    r: &Map<String, Value>,
    kind: BatchKind,
    collected_at: &str,
) -> Option<Correlated> {
    let lock = (kind == BatchKind::Locks).then(|| {
        let mut lock = copy(
            r,
            &[
                ("locktype", "locktype"),
                ("mode", "mode"),
                ("relation_name", "relation_name"),
                ("waiting_ms", "waiting_ms"),
                ("cycle", "cycle"),
            ],
        )
        .0;
        let blockers: Vec<Value> = r
            .get("blocked_by")
            .and_then(Value::as_array)
            .map(|links| links.iter().filter_map(|l| l.get("pid").cloned()).collect())
            .unwrap_or_default();
        lock.insert("blocked_by_pids".into(), Value::from(blockers));
        lock
    });
    let session = Session {
        correlation: r.get("correlation")?.clone(),
        pid: r.get("pid")?.as_i64()?,
        query_start: r.get("query_start")?.as_str()?,
        query_duration_ms: r.get("query_duration_ms").and_then(Value::as_f64),
        query: r.get("query").and_then(Value::as_str),
        running: r.get("state").and_then(Value::as_str) == Some("active")
            || kind == BatchKind::Locks,
        detail: copy(
            r,
            &[
                ("pid", "pid"),
                ("datname", "database"),
                ("usename", "user"),
                ("application_name", "application_name"),
                ("state", "state"),
                ("wait_event_type", "wait_event_type"),
                ("wait_event", "wait_event"),
                ("blocking_pids", "blocking_pids"),
                ("query_id", "query_id"),
                ("fingerprint", "fingerprint"),
                ("query_truncated", "query_truncated"),
                ("query_start", "query_start"),
            ],
        ),
        lock,
    };
    Correlated::session(session, collected_at)
}

fn stored_log_entry(r: &Map<String, Value>) -> Option<Correlated> {
    let message = r.get("message").and_then(Value::as_str).unwrap_or("");
    let statement = r.get("statement").and_then(Value::as_str);
    let query = pga_logparse::entry::statement_of(statement, message)
        .or_else(|| r.get("extracted")?.get("plan")?.get("Query Text")?.as_str());
    Correlated::log_entry(LogStatement {
        correlation: r.get("correlation")?.clone(),
        logged_at: r.get("timestamp")?.as_str()?,
        duration_ms: r.get("duration_ms")?.as_f64()?,
        query,
        detail: copy(
            r,
            &[
                ("pid", "pid"),
                ("dbname", "database"),
                ("user", "user"),
                ("application_name", "application_name"),
                ("event", "event"),
                ("error_severity", "error_severity"),
                ("query_id", "query_id"),
                ("fingerprint", "fingerprint"),
                ("timestamp", "logged_at"),
            ],
        )
        // An auto_explain entry's plan goes with its correlated statement (docs/plans.md).
        .put(
            "plan_id",
            &r.get("extracted").and_then(|x| x.get("plan_id")),
        )
        .put("plan", &r.get("extracted").and_then(|x| x.get("plan"))),
    })
}
