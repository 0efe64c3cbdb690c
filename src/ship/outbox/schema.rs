//! The outbox database file: opening it with the right pragmas, creating the schema, detecting a
//! corrupt or unreadable file, and moving such a file aside so a fresh one can take its place.
//!
//! It does not know about batches or eviction; that is `outbox/mod.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::OutboxError;
use crate::state::aside::{self, companions};

/// How long a statement waits for a lock held by another connection (the `status` command, or a
/// second agent process) before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id     TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    collected_at TEXT    NOT NULL,
    enqueued_ms  INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    charge       INTEGER NOT NULL,
    body         BLOB    NOT NULL,
    protocol     TEXT    NOT NULL DEFAULT 'batch'
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id     TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    collected_at TEXT    NOT NULL,
    enqueued_ms  INTEGER NOT NULL,
    dead_ms      INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    http_status  INTEGER,
    reason       TEXT    NOT NULL,
    charge       INTEGER NOT NULL,
    body         BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_cursor (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    position  TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS breaker (
    id                   INTEGER PRIMARY KEY CHECK (id = 1),
    state                TEXT    NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    opened_ms            INTEGER,
    transition_from      TEXT,
    transition_to        TEXT,
    transition_ms        INTEGER,
    transition_reason    TEXT
);
";

/// Bytes on disk of the database plus its write-ahead log.
pub fn file_bytes(path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    size(path) + size(&companions(path)[0])
}

/// True when an error means the file itself is damaged (as opposed to a busy lock or a full disk).
pub fn is_corruption(e: &rusqlite::Error, path: &Path) -> bool {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => true,
        // An existing path SQLite cannot open at all (a directory, a file it cannot lock or map) is
        // as unusable as a corrupt one; a missing file is not (the directory is the problem).
        Some(ErrorCode::CannotOpen) => path.exists(),
        _ => false,
    }
}

/// Opens (creating if needed) the database read-write with WAL, `synchronous = FULL`, and the schema,
/// then checks its integrity. `wal_limit_bytes` bounds the write-ahead log between checkpoints.
pub fn open_rw(path: &Path, wal_limit_bytes: u64) -> Result<Connection, OutboxError> {
    let ctx = |source| OutboxError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(ctx)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(ctx)?;
    // `quick_check` first: a file of garbage fails here with NOTADB, a truncated or scribbled one
    // with a report that is not "ok". Both are handled by the caller as corruption.
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(ctx)?;
    if check != "ok" {
        return Err(OutboxError::Corrupt {
            path: path.to_path_buf(),
            detail: check,
        });
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(ctx)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OutboxError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("cannot switch to WAL mode (journal_mode is {mode})"),
        });
    }
    // FULL: every commit fsyncs the WAL, so a batch whose enqueue returned survives power loss,
    // not only a crash of the process. At a handful of batches per minute the cost is invisible.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(ctx)?;
    set_wal_limit(&conn, wal_limit_bytes);
    // The outbox is read oldest-first and written once: a small page cache (256 KiB instead of
    // SQLite's 2 MB) costs nothing and keeps the daemon's memory small.
    conn.pragma_update(None, "cache_size", -256).map_err(ctx)?;
    conn.execute_batch(SCHEMA).map_err(ctx)?;
    add_protocol_column(&conn).map_err(ctx)?;
    Ok(conn)
}

/// Outboxes written before the wire protocol became a setting hold only batch-protocol rows: give
/// them the `protocol` column with that value.
fn add_protocol_column(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('outbox') WHERE name = 'protocol'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE outbox ADD COLUMN protocol TEXT NOT NULL DEFAULT 'batch'")?;
    }
    Ok(())
}

/// Bounds the write-ahead log: checkpoint after about `bytes` of it, and truncate it back to that
/// size afterwards. Failure leaves SQLite's defaults (1000 pages), which is logged, not fatal.
pub fn set_wal_limit(conn: &Connection, bytes: u64) {
    let result = conn
        .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
        .and_then(|page_size| {
            let pages = (bytes / page_size.max(512) as u64).max(16);
            conn.pragma_update(None, "wal_autocheckpoint", pages as i64)?;
            conn.pragma_update(None, "journal_size_limit", bytes as i64)
        });
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot bound the outbox write-ahead log");
    }
}

/// Opens the database read-only for `status`, which must work while the daemon writes to it:
/// WAL readers never block the writer, and a busy timeout rides out a checkpoint.
pub fn open_ro(path: &Path) -> Result<Connection, OutboxError> {
    let ctx = |source| OutboxError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(ctx)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(ctx)?;
    Ok(conn)
}

/// Renames a damaged database (and its WAL and shared-memory files) aside
/// ([`crate::state::aside::move_aside`]); an I/O error names `path`. Returns the new name.
pub fn move_aside(path: &Path) -> Result<PathBuf, OutboxError> {
    aside::move_aside(path).map_err(|source| OutboxError::Io {
        path: path.to_path_buf(),
        source,
    })
}
