//! The outbox's persistent counters (written by the outbox in its transactions) and the figures
//! read out of the database: depth, bytes and age per type, dead letters, counters, breaker state.
//! Reading works on any connection, so `status` can use a read-only one while the daemon writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::batch::BatchKind;
use crate::ship::breaker::{BreakerState, CircuitState, Transition};

/// Per-type figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KindStats {
    pub kind: String,
    /// Batches waiting.
    pub depth: u64,
    /// Their compressed bytes.
    pub bytes: u64,
    /// Enqueue time of the oldest waiting batch (unix milliseconds).
    pub oldest_enqueued_ms: Option<i64>,
    /// Since the database was created.
    pub delivered: u64,
    pub evicted: u64,
    pub dead_lettered: u64,
}

/// One dead letter, without its body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterInfo {
    pub batch_id: String,
    pub kind: String,
    pub collected_at: String,
    pub dead_ms: i64,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub reason: String,
}

/// Everything `status` and `/metrics` show about the outbox. Counters are cumulative since the
/// database file was created.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxStats {
    pub path: PathBuf,
    /// Database plus WAL on disk.
    pub file_bytes: u64,
    /// One entry per batch type, in [`BatchKind::ALL`] order.
    pub kinds: Vec<KindStats>,
    pub depth: u64,
    pub bytes: u64,
    pub oldest_enqueued_ms: Option<i64>,
    /// Dead letters currently kept.
    pub dead_letters: u64,
    /// The most recent dead letters, newest first (at most 5).
    pub recent_dead_letters: Vec<DeadLetterInfo>,
    /// Dead letters dropped (over the row limit or to make room).
    pub dead_letters_dropped: u64,
    pub evicted: u64,
    pub delivered: u64,
    pub last_success_ms: Option<i64>,
    /// Times a corrupt database was replaced by a fresh one (as recorded in the fresh one).
    pub recreated: u64,
    /// Correlated statements merged into another payload of their correlation ID because the
    /// request budget was spent (bitville protocol).
    pub correlated_merged: u64,
    /// Requests the listener answered 429 (rate limited); they were sent again later.
    pub throttled: u64,
    pub breaker: Option<BreakerState>,
}

/// Reads the figures: every counter in one query and every type's depth, bytes and age in
/// another (it is read after every cycle's write and every delivery: a query per type and per
/// counter was 8% of the agent's CPU in the side-by-side profile, docs/cost.md).
pub fn read(conn: &Connection, path: &Path) -> rusqlite::Result<OutboxStats> {
    let mut counters: HashMap<String, i64> = HashMap::new();
    let mut stmt = conn.prepare("SELECT name, value FROM counters")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        counters.insert(r.get(0)?, r.get(1)?);
    }
    drop(rows);
    let counter = |name: &str| -> rusqlite::Result<u64> {
        Ok(counters.get(name).copied().unwrap_or(0).max(0) as u64)
    };
    let mut queued: HashMap<String, (i64, i64, Option<i64>)> = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT kind, count(*), coalesce(sum(length(body)), 0), min(enqueued_ms)
         FROM outbox GROUP BY kind",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        queued.insert(r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?));
    }
    drop(rows);
    let mut kinds = Vec::new();
    for kind in BatchKind::ALL {
        let (depth, bytes, oldest) = queued.get(kind.as_str()).copied().unwrap_or((0, 0, None));
        kinds.push(KindStats {
            kind: kind.as_str().to_string(),
            depth: depth as u64,
            bytes: bytes as u64,
            oldest_enqueued_ms: oldest,
            delivered: counter(&format!("delivered.{kind}"))?,
            evicted: counter(&format!("evicted.{kind}"))?,
            dead_lettered: counter(&format!("dead_lettered.{kind}"))?,
        });
    }
    let dead_letters: i64 =
        conn.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?;
    let mut stmt = conn.prepare(
        "SELECT batch_id, kind, collected_at, dead_ms, attempts, http_status, reason
         FROM dead_letters ORDER BY seq DESC LIMIT 5",
    )?;
    let recent_dead_letters = stmt
        .query_map([], |r| {
            Ok(DeadLetterInfo {
                batch_id: r.get(0)?,
                kind: r.get(1)?,
                collected_at: r.get(2)?,
                dead_ms: r.get(3)?,
                attempts: r.get(4)?,
                http_status: r.get(5)?,
                reason: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let last_success_ms = counters.get("last_success_ms").copied();
    Ok(OutboxStats {
        path: path.to_path_buf(),
        file_bytes: super::schema::file_bytes(path),
        depth: kinds.iter().map(|k| k.depth).sum(),
        bytes: kinds.iter().map(|k| k.bytes).sum(),
        oldest_enqueued_ms: kinds.iter().filter_map(|k| k.oldest_enqueued_ms).min(),
        evicted: kinds.iter().map(|k| k.evicted).sum(),
        delivered: kinds.iter().map(|k| k.delivered).sum(),
        kinds,
        dead_letters: dead_letters as u64,
        recent_dead_letters,
        dead_letters_dropped: counter("dead_letters_dropped")?,
        last_success_ms,
        recreated: counter("recreated")?,
        correlated_merged: counter("correlated_merged")?,
        throttled: counter("throttled")?,
        breaker: read_breaker(conn)?,
    })
}

/// The persisted breaker state, if any.
pub fn read_breaker(conn: &Connection) -> rusqlite::Result<Option<BreakerState>> {
    conn.query_row(
        "SELECT state, consecutive_failures, opened_ms, transition_from, transition_to,
                transition_ms, transition_reason
         FROM breaker WHERE id = 1",
        [],
        |r| {
            let transition = match (
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<String>>(6)?,
            ) {
                (Some(f), Some(t), Some(at), Some(reason)) => Some((f, t, at, reason)),
                _ => None,
            };
            Ok(breaker_from_row(
                &r.get::<_, String>(0)?,
                r.get(1)?,
                r.get(2)?,
                transition,
            ))
        },
    )
    .optional()
}

/// Adds `by` to a counter.
pub(super) fn bump(conn: &Connection, name: &str, by: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        params![name, by],
    )
    .map(|_| ())
}

/// Sets a value (times, not counts).
pub(super) fn set(conn: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO counters (name, value) VALUES (?1, ?2)",
        params![name, value],
    )
    .map(|_| ())
}

/// The breaker columns back into a state.
fn breaker_from_row(
    state: &str,
    failures: u32,
    opened_ms: Option<i64>,
    transition: Option<(String, String, i64, String)>,
) -> BreakerState {
    BreakerState {
        state: CircuitState::parse(state).unwrap_or(CircuitState::Closed),
        consecutive_failures: failures,
        opened_ms,
        last_transition: transition.and_then(|(from, to, at_ms, reason)| {
            Some(Transition {
                from: CircuitState::parse(&from)?,
                to: CircuitState::parse(&to)?,
                at_ms,
                reason,
            })
        }),
    }
}
