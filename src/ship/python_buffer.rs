//! The Python agent's buffer: payloads the Bitville Python PostgreSQL agent could not deliver,
//! left in its persist-queue database, read once so they are sent before new data.
//!
//! The Python agent (`transmission/buffer.py`) kept `FIFOSQLiteQueue(path=buffer_path,
//! multithreading=True, auto_commit=True)` and stored `put(json.dumps(payload))`. persist-queue
//! 1.1 writes `<buffer_path>/data.db` in WAL mode with one table,
//! `queue_default (_id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB, timestamp FLOAT)`, each `data`
//! a pickle (protocol 4) of the JSON text. Taking an item deletes its row, so every row left is
//! unsent.
//!
//! [`import`] reads those rows oldest first and hands each valid payload to a callback (the daemon
//! stores it in its outbox); `decode.rs` turns one row into a payload, `marker.rs` remembers how
//! far an import got. This module never writes, deletes or write-locks the Python file: it is
//! opened read-only, and `immutable` when no write-ahead log or journal holds part of it.

mod decode;
mod marker;

use std::fmt::Display;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

pub use decode::{DecodeError, PG_LOCKS, SOURCES};
pub use marker::{FileIdentity, ImportMarker, MARKER_FILE_NAME};

/// Where the Python agent kept its buffer by default.
pub const DEFAULT_DIR: &str = "/var/lib/bitville-postgres-agent/buffer";

/// persist-queue's database file name (its `db_file_name` default).
pub const DB_FILE_NAME: &str = "data.db";

/// persist-queue's table for `FIFOSQLiteQueue` with the default queue name.
pub const TABLE: &str = "queue_default";

/// The marker is saved after this many items, so a crash repeats at most this many pushes. Each
/// push is already an fsynced outbox commit; one more fsync per 50 costs little.
pub const MARKER_EVERY: u64 = 50;

/// Skipped items logged one by one; the rest are only counted.
const SKIP_WARNINGS: u64 = 10;

/// One payload from the Python buffer, ready to POST to the Bitville listener.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyPayload {
    /// persist-queue's `_id`: the Python agent's enqueue order.
    pub id: i64,
    /// After the `pg_locks` conversion: one of [`SOURCES`].
    pub source: String,
    /// The payload's `timestamp` (unix seconds).
    pub timestamp: f64,
    /// The complete payload object, re-serialized.
    pub json: String,
}

/// What one [`import`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportReport {
    /// Items in the Python buffer: `already_imported + pushed + skipped`.
    pub found: u64,
    /// Items pushed by this run.
    pub pushed: u64,
    /// Items skipped by this run because they could not be decoded or validated.
    pub skipped: u64,
    /// Items an earlier run already pushed or skipped (at or below the marker).
    pub already_imported: u64,
    /// The Python buffer's database, when there is one.
    pub db_path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PythonBufferError {
    #[error("cannot read the Python agent's buffer {}: {source}", path.display())]
    Metadata { path: PathBuf, source: io::Error },
    #[error("cannot open the Python agent's buffer {} read-only: {source}{hint}", path.display())]
    Open {
        path: PathBuf,
        hint: &'static str,
        source: rusqlite::Error,
    },
    #[error("the Python agent's buffer {} has no table {TABLE}: not a persist-queue FIFOSQLiteQueue", path.display())]
    NotAQueue { path: PathBuf },
    #[error("cannot read the Python agent's buffer {} after item {after_id}: {source}", path.display())]
    Read {
        path: PathBuf,
        after_id: i64,
        source: rusqlite::Error,
    },
    #[error("pushing item {id} of the Python agent's buffer {} failed: {message}", path.display())]
    Push {
        path: PathBuf,
        id: i64,
        message: String,
    },
    #[error("import marker {}: {source}", path.display())]
    Marker { path: PathBuf, source: io::Error },
    #[error("import marker {} is unreadable ({source}); delete it to import the Python buffer again from its first item", path.display())]
    MarkerCorrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the Python agent's buffer path {} is not valid UTF-8", path.display())]
    NonUtf8Path { path: PathBuf },
}

/// Reads the import marker in `state_dir`, for `status`; `None` before any import.
pub fn marker(state_dir: &Path) -> Result<Option<ImportMarker>, PythonBufferError> {
    marker::load(&state_dir.join(MARKER_FILE_NAME))
}

/// Pushes every unsent payload of the Python agent's buffer in `buffer_dir`, oldest first, that an
/// earlier import has not handled, recording progress in `<state_dir>/python-buffer-import.json`.
///
/// - No directory or no `data.db` in it: nothing happens.
/// - Items that cannot be unpickled, parsed or validated are skipped, counted and logged (the
///   first ten one by one); they never stop the import.
/// - The marker is saved every [`MARKER_EVERY`] items and at the end, so after a crash at most the
///   last 50 pushes are repeated, and an import of an already imported file pushes nothing. A new
///   file at the same path (another inode) is imported from its first item.
/// - When `push` fails the marker is saved up to the last success and the error returned: call
///   again later (the next start) to continue.
///
/// Items are read one at a time; memory does not grow with the size of the buffer.
pub fn import<E: Display>(
    buffer_dir: &Path,
    state_dir: &Path,
    mut push: impl FnMut(LegacyPayload) -> Result<(), E>,
) -> Result<ImportReport, PythonBufferError> {
    let db_path = buffer_dir.join(DB_FILE_NAME);
    let meta = match fs::metadata(&db_path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Ok(ImportReport::default()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ImportReport::default()),
        Err(source) => {
            return Err(PythonBufferError::Metadata {
                path: db_path,
                source,
            })
        }
    };
    let file = FileIdentity::of(&meta);
    let marker_path = state_dir.join(MARKER_FILE_NAME);
    let previous = marker::load(&marker_path)?;

    let conn = open_read_only(&db_path)?;
    let read_err = |after_id: i64| {
        let path = db_path.clone();
        move |source| PythonBufferError::Read {
            path,
            after_id,
            source,
        }
    };
    let has_table = |name: &str| {
        conn.query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |_| Ok(()),
        )
        .optional()
        .map(|found| found.is_some())
    };
    if !has_table(TABLE).map_err(read_err(0))? {
        return Err(PythonBufferError::NotAQueue { path: db_path });
    }
    // AUTOINCREMENT never reuses an `_id` within one file, so a file whose highest id ever issued
    // is below the marker is another file, even if it got the old inode number.
    let highest_issued: Option<i64> = if has_table("sqlite_sequence").map_err(read_err(0))? {
        conn.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            [TABLE],
            |r| r.get(0),
        )
        .optional()
        .map_err(read_err(0))?
    } else {
        None
    };

    let mut state = match previous {
        Some(m) if m.file == file && highest_issued.is_none_or(|seq| seq >= m.last_id) => {
            ImportMarker {
                db_path: db_path.clone(),
                ..m
            }
        }
        other => {
            if let Some(old) = other {
                tracing::info!(event = "python_buffer_new_file", db = %db_path.display(),
                    previous = %old.db_path.display(), previous_last_id = old.last_id,
                    "the Python agent's buffer is not the file imported before; importing it from its first item");
            }
            ImportMarker {
                db_path: db_path.clone(),
                file,
                last_id: 0,
                pushed: 0,
                skipped: 0,
                complete: false,
                updated_ms: 0,
            }
        }
    };
    let start_after = state.last_id;

    // Counted over the imported prefix only (an index range), and not fatal: a damaged page there
    // must not stop the import of the rows after it.
    let already_imported = conn
        .query_row(
            &format!("SELECT count(*) FROM {TABLE} WHERE _id <= ?1"),
            [start_after],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n.max(0) as u64)
        .unwrap_or_else(|e| {
            tracing::warn!(event = "python_buffer_count_failed", db = %db_path.display(),
                error = %e, "cannot count the imported items; reporting the marker's totals");
            state.pushed + state.skipped
        });
    let mut report = ImportReport {
        found: already_imported,
        already_imported,
        db_path: Some(db_path.clone()),
        ..ImportReport::default()
    };
    let unsent: bool = conn
        .query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE _id > ?1)"),
            [start_after],
            |r| r.get(0),
        )
        .map_err(read_err(start_after))?;
    if !unsent {
        if !state.complete && report.found > 0 {
            state.complete = true;
            save(&marker_path, &mut state)?;
        }
        return Ok(report);
    }
    tracing::info!(event = "python_buffer_import", db = %db_path.display(), after_id = start_after,
        "sending the Python agent's unsent payloads before new data");

    let mut stmt = conn
        .prepare(&format!(
            "SELECT _id, data FROM {TABLE} WHERE _id > ?1 ORDER BY _id"
        ))
        .map_err(read_err(start_after))?;
    let mut rows = stmt.query([start_after]).map_err(read_err(start_after))?;
    let mut unsaved = 0;
    loop {
        // A read error (a damaged page) ends the import; what was pushed before it is recorded.
        let row = rows.next().and_then(|row| match row {
            Some(r) => Ok(Some((r.get::<_, i64>(0)?, item_bytes(r.get_ref(1)?)))),
            None => Ok(None),
        });
        let (id, item) = match row {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(source) => {
                let err = read_err(state.last_id)(source);
                return Err(stop(&marker_path, &mut state, err));
            }
        };
        let decoded = item.and_then(decode::decode);
        match decoded {
            Ok(d) => {
                let payload = LegacyPayload {
                    id,
                    source: d.source,
                    timestamp: d.timestamp,
                    json: d.json,
                };
                if let Err(e) = push(payload) {
                    let err = PythonBufferError::Push {
                        path: db_path.clone(),
                        id,
                        message: e.to_string(),
                    };
                    return Err(stop(&marker_path, &mut state, err));
                }
                report.pushed += 1;
                state.pushed += 1;
            }
            Err(reason) => {
                report.skipped += 1;
                state.skipped += 1;
                if report.skipped <= SKIP_WARNINGS {
                    tracing::warn!(event = "python_buffer_item_skipped", db = %db_path.display(),
                        id, reason = %reason, "skipping an item of the Python agent's buffer");
                }
            }
        }
        state.last_id = id;
        unsaved += 1;
        if unsaved >= MARKER_EVERY {
            save(&marker_path, &mut state)?;
            unsaved = 0;
        }
    }
    state.complete = true;
    save(&marker_path, &mut state)?;
    report.found += report.pushed + report.skipped;
    if report.skipped > 0 {
        tracing::warn!(event = "python_buffer_items_skipped", db = %db_path.display(),
            skipped = report.skipped, logged = report.skipped.min(SKIP_WARNINGS),
            "items of the Python agent's buffer could not be decoded or validated and were not sent");
    }
    tracing::info!(event = "python_buffer_imported", db = %db_path.display(),
        pushed = report.pushed, skipped = report.skipped,
        "the Python agent's buffer is imported; the file was not modified and can be deleted");
    Ok(report)
}

/// The stored `data` of one row: bytes to unpickle, or why there are none.
fn item_bytes(value: ValueRef<'_>) -> Result<&[u8], DecodeError> {
    match value {
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(b),
        ValueRef::Null => Err(DecodeError::Stored("NULL")),
        ValueRef::Integer(_) | ValueRef::Real(_) => Err(DecodeError::Stored("a number")),
    }
}

/// Records the progress so far before an import ends with `err`, so the next attempt neither
/// repeats nor misses an item.
fn stop(path: &Path, state: &mut ImportMarker, err: PythonBufferError) -> PythonBufferError {
    if state.last_id > 0 {
        if let Err(save_err) = save(path, state) {
            tracing::error!(event = "python_buffer_marker_failed", error = %save_err,
                "cannot record the import's progress; some payloads will be pushed again");
        }
    }
    err
}

fn save(path: &Path, state: &mut ImportMarker) -> Result<(), PythonBufferError> {
    state.updated_ms = crate::clock::now_ms();
    marker::save(path, state)
}

/// Opens the Python buffer without any write. When no `-wal` or `-journal` holds part of the
/// database, it is opened `immutable`: no locks, no `-shm` created. Otherwise SQLite reads through
/// the log, with the `-shm` index (creating it when missing and the directory allows, else building
/// it in memory); nothing is checkpointed.
fn open_read_only(db: &Path) -> Result<Connection, PythonBufferError> {
    let sidecar = |suffix: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let has_log = ["-wal", "-journal"]
        .iter()
        .any(|s| fs::metadata(sidecar(s)).is_ok_and(|m| m.len() > 0));
    let Some(text) = db.to_str() else {
        return Err(PythonBufferError::NonUtf8Path {
            path: db.to_path_buf(),
        });
    };
    let mut uri = String::from("file:");
    for c in text.chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str(if has_log { "?mode=ro" } else { "?immutable=1" });
    let hint = if has_log {
        ". Part of it is still in its write-ahead log or journal (the Python agent did not stop \
         cleanly, or still runs), and SQLite could not read that read-only: stop the Python \
         agent, or start and stop it once so SQLite folds the log into the file"
    } else {
        ""
    };
    let err = |source| PythonBufferError::Open {
        path: db.to_path_buf(),
        hint,
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&uri, flags).map_err(err)?;
    // A read-only connection cannot checkpoint, but say so: closing must never fold the log into
    // the Python file.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(err)?;
    conn.pragma_update(None, "query_only", true).map_err(err)?;
    // Opening is lazy; read the schema now so a file SQLite cannot use fails here, with the hint.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .map_err(err)?;
    Ok(conn)
}
