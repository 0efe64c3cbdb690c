//! The durable outbox: a SQLite database (WAL, `synchronous = FULL`) under `agent.state_dir` holding
//! every batch from the moment it is collected until the listener acknowledged it.
//!
//! Guarantees (docs/shipping.md states them for users):
//! - [`Outbox::push`] returns only after the batch is committed and fsynced; a crash or `kill -9`
//!   at any later point cannot lose it.
//! - A batch leaves the outbox only by [`Outbox::ack`] (after a 2xx), [`Outbox::dead_letter`] (a
//!   rejection that can never succeed), or eviction at the size cap; each is counted per type.
//! - Order is FIFO by enqueue sequence, so per type as well.
//! - Size: every stored batch is charged its compressed size plus [`ROW_OVERHEAD`]. The sum over the
//!   outbox and the dead letters is kept at or under the budget, 7/8 of `max_size_bytes`; the
//!   remaining 1/8 is for SQLite itself (the WAL is checkpointed at 1/16 of the cap). When a new batch
//!   does not fit, dead letters are dropped first (they can never be delivered), then the oldest
//!   batches of any type.
//! - A corrupt or unreadable file is moved aside (`outbox.db.corrupt-<ms>`) and a fresh one created
//!   ([`Outbox::open`], [`Outbox::recover`]).
//!
//! This file owns the rows; `evict.rs` makes room at the cap, `schema.rs` owns the file, `stats.rs`
//! keeps the counters and reads the figures for `status`.

pub mod cursor;
mod evict;
mod fresh;
mod replace;
pub mod schema;
mod space;
pub mod stats;
pub mod vanish;

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use uuid::Uuid;

use crate::batch::BatchKind;
use crate::clock::now_ms;
use crate::config::Protocol;
use crate::ship::breaker::BreakerState;

use evict::{drop_oldest_dead_letter, make_room};
use stats::{bump, set};
pub use stats::{DeadLetterInfo, KindStats, OutboxStats};

/// Bytes charged per stored batch on top of its body: row metadata, its index entry and the partly
/// filled last overflow page (SQLite's default page size is 4 KiB).
pub const ROW_OVERHEAD: u64 = 4096;

/// Size of the reserve file kept beside the outbox (see [`Outbox::make_space`]).
pub const RESERVE_BYTES: u64 = 2 * 1024 * 1024;

/// Dead letters kept for inspection; older ones are dropped (and counted) beyond this.
pub const MAX_DEAD_LETTERS: u64 = 100;

/// The database file name under `agent.state_dir`.
pub const FILE_NAME: &str = "outbox.db";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("outbox {} is corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("outbox {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox {}: stored row {seq} is unreadable: {detail}", path.display())]
    BadRow {
        path: PathBuf,
        seq: i64,
        detail: String,
    },
}

impl OutboxError {
    /// True when the storage, not the file, is the problem: a full disk (or file-size limit), a
    /// read-only or unwritable state directory, an I/O error. Such a write can succeed later.
    pub fn is_storage(&self) -> bool {
        match self {
            OutboxError::Io { .. } => true,
            OutboxError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(
                    ErrorCode::DiskFull
                        | ErrorCode::ReadOnly
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::PermissionDenied
                        | ErrorCode::CannotOpen
                )
            ),
            _ => false,
        }
    }

    /// True for a full disk or a file-size limit, where evicting old requests can make room.
    pub fn is_disk_full(&self) -> bool {
        match self {
            OutboxError::Io { source, .. } => matches!(source.raw_os_error(), Some(28 | 27)),
            OutboxError::Sqlite { source, .. } => {
                source.sqlite_error_code() == Some(ErrorCode::DiskFull)
                    || source.to_string().contains("database or disk is full")
            }
            _ => false,
        }
    }

    /// True when the database file itself is damaged and should be moved aside.
    pub fn is_corruption(&self) -> bool {
        match self {
            OutboxError::Corrupt { .. } => true,
            OutboxError::Sqlite { path, source } => schema::is_corruption(source, path),
            _ => false,
        }
    }
}

/// One request ready to store: its JSON body, gzip-compressed, and the protocol it is written in.
/// In the batch protocol a row is one (part of a) batch; in the bitville protocol it is one payload.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBatch {
    pub batch_id: Uuid,
    pub kind: BatchKind,
    pub collected_at: String,
    /// gzip of the JSON body.
    pub body: Vec<u8>,
    pub protocol: Protocol,
}

/// A stored request read back for sending.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBatch {
    pub seq: i64,
    pub batch_id: Uuid,
    pub kind: BatchKind,
    pub enqueued_ms: i64,
    pub attempts: u32,
    pub body: Vec<u8>,
    pub protocol: Protocol,
}

/// What a push or a cap change had to remove to make room.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvictionReport {
    /// Batches evicted, oldest first (possibly including the new one when it alone exceeds the
    /// budget).
    pub evicted: Vec<(BatchKind, Uuid)>,
    /// Dead letters dropped to make room.
    pub dead_letters_dropped: u64,
    /// False when the new batch itself could not be stored.
    pub stored: bool,
}

/// The open outbox.
pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    max_size_bytes: u64,
    /// Sum of `charge` over `outbox` and `dead_letters`, mirrored from the database.
    charged: u64,
    /// (device, inode) of the file at `path` when it was opened ([`vanish`]).
    identity: Option<(u64, u64)>,
    /// Its file was found removed or replaced and that was said ([`vanish`]).
    pub(crate) vanished_reported: bool,
}

/// Inserts one request; returns what it is charged.
pub(super) fn insert_row(tx: &Connection, row: &NewBatch) -> rusqlite::Result<u64> {
    let cost = charge(row.body.len());
    tx.execute(
        "INSERT INTO outbox (batch_id, kind, collected_at, enqueued_ms, charge, body, protocol)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            row.batch_id.to_string(),
            row.kind.as_str(),
            row.collected_at,
            now_ms(),
            cost as i64,
            row.body,
            row.protocol.as_str(),
        ],
    )?;
    Ok(cost)
}

/// Deletes one request; returns what it was charged, None when it was gone.
pub(super) fn delete_row(tx: &Connection, seq: i64) -> rusqlite::Result<Option<i64>> {
    tx.query_row(
        "DELETE FROM outbox WHERE seq = ?1 RETURNING charge",
        [seq],
        |r| r.get(0),
    )
    .optional()
}

/// Bytes charged against the budget for a body of `len` bytes.
pub fn charge(len: usize) -> u64 {
    len as u64 + ROW_OVERHEAD
}

/// The part of `max_size_bytes` stored batches may use.
pub fn budget(max_size_bytes: u64) -> u64 {
    max_size_bytes - max_size_bytes / 8
}

impl Outbox {
    /// Opens or creates the outbox at `path`. A corrupt or unreadable file is moved aside with a
    /// loud error and replaced by a fresh one; only a failure to create the fresh one is an error.
    pub fn open(path: &Path, max_size_bytes: u64) -> Result<Outbox, OutboxError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OutboxError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        match schema::open_rw(path, max_size_bytes / 16) {
            Ok(conn) => {
                let outbox = Outbox::from_conn(conn, path, max_size_bytes)?;
                outbox.ensure_reserve();
                Ok(outbox)
            }
            Err(e) if e.is_corruption() => Outbox::recover(path, max_size_bytes, &e),
            Err(e) => Err(e),
        }
    }

    /// Moves a damaged database aside and creates a fresh one. The batches in the damaged file are
    /// not delivered; its copy is kept for inspection.
    pub fn recover(
        path: &Path,
        max_size_bytes: u64,
        cause: &OutboxError,
    ) -> Result<Outbox, OutboxError> {
        let moved = schema::move_aside(path)?;
        tracing::error!(
            event = "outbox_recreated",
            outbox = %path.display(),
            moved_to = %moved.display(),
            error = %cause,
            "the outbox database is corrupt or unreadable; moved it aside and created a fresh one. \
             Batches still queued in the old file are not delivered"
        );
        let conn = schema::open_rw(path, max_size_bytes / 16)?;
        let mut outbox = Outbox::from_conn(conn, path, max_size_bytes)?;
        outbox.bump("recreated", 1)?;
        Ok(outbox)
    }

    fn from_conn(
        conn: Connection,
        path: &Path,
        max_size_bytes: u64,
    ) -> Result<Outbox, OutboxError> {
        let mut outbox = Outbox {
            conn,
            path: path.to_path_buf(),
            max_size_bytes,
            charged: 0,
            identity: vanish::identity(path),
            vanished_reported: false,
        };
        outbox.charged = outbox
            .conn
            .query_row(
                "SELECT (SELECT coalesce(sum(charge), 0) FROM outbox)
                      + (SELECT coalesce(sum(charge), 0) FROM dead_letters)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| outbox.err(e))? as u64;
        Ok(outbox)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn max_size_bytes(&self) -> u64 {
        self.max_size_bytes
    }

    /// Bytes currently charged against the budget.
    pub fn charged_bytes(&self) -> u64 {
        self.charged
    }

    fn err(&self, source: rusqlite::Error) -> OutboxError {
        OutboxError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores a batch durably, first evicting what must go to keep the budget.
    pub fn push(&mut self, batch: &NewBatch) -> Result<EvictionReport, OutboxError> {
        self.push_all(std::slice::from_ref(batch))
    }

    /// Stores several requests in one transaction (one fsync), in order, first evicting what must
    /// go to keep the budget. When together they exceed the budget they are stored one by one, so
    /// the cap evicts the oldest of them rather than all.
    pub fn push_all(&mut self, batches: &[NewBatch]) -> Result<EvictionReport, OutboxError> {
        self.push_all_with_cursor(batches, None)
    }

    /// [`Outbox::push_all`] that also records `cursor` (the log position after a pg_logs batch's
    /// entries) as the cursor of these requests, in the same transaction ([`cursor`]). Stored one
    /// by one (over the budget together), the cursor goes with the last of them.
    pub fn push_all_with_cursor(
        &mut self,
        batches: &[NewBatch],
        cursor: Option<&str>,
    ) -> Result<EvictionReport, OutboxError> {
        let budget = budget(self.max_size_bytes);
        let cost: u64 = batches.iter().map(|b| charge(b.body.len())).sum();
        if batches.len() > 1 && cost > budget {
            let mut total = EvictionReport {
                stored: true,
                ..EvictionReport::default()
            };
            for (i, b) in batches.iter().enumerate() {
                let last = i + 1 == batches.len();
                let r =
                    self.push_all_with_cursor(std::slice::from_ref(b), cursor.filter(|_| last))?;
                total.evicted.extend(r.evicted);
                total.dead_letters_dropped += r.dead_letters_dropped;
                total.stored &= r.stored;
            }
            return Ok(total);
        }
        if let [batch] = batches {
            if cost > budget {
                // Evicting everything else would not make room: the batch itself is what the cap
                // evicts.
                self.bump(&format!("evicted.{}", batch.kind), 1)?;
                return Ok(EvictionReport {
                    evicted: vec![(batch.kind, batch.batch_id)],
                    dead_letters_dropped: 0,
                    stored: false,
                });
            }
        }
        let path = self.path.clone();
        let err = |source| OutboxError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let (report, charged) = make_room(&tx, self.charged, cost, budget).map_err(err)?;
        let mut first_seq = None;
        for batch in batches {
            insert_row(&tx, batch).map_err(err)?;
            first_seq.get_or_insert(tx.last_insert_rowid());
        }
        if let (Some(position), Some(first_seq)) = (cursor, first_seq) {
            cursor::write(&tx, first_seq, tx.last_insert_rowid(), position).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        self.charged = charged + cost;
        if !report.evicted.is_empty() {
            self.checkpoint();
        }
        Ok(EvictionReport {
            stored: true,
            ..report
        })
    }

    /// Changes the cap (on reload), evicting at once if the outbox is over the new budget.
    pub fn set_max_size(&mut self, max_size_bytes: u64) -> Result<EvictionReport, OutboxError> {
        self.max_size_bytes = max_size_bytes;
        schema::set_wal_limit(&self.conn, max_size_bytes / 16);
        let path = self.path.clone();
        let err = |source| OutboxError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let (report, charged) =
            make_room(&tx, self.charged, 0, budget(max_size_bytes)).map_err(err)?;
        tx.commit().map_err(err)?;
        self.charged = charged;
        Ok(report)
    }

    /// The oldest batch, if any.
    pub fn oldest(&self) -> Result<Option<StoredBatch>, OutboxError> {
        self.oldest_after(0)
    }

    /// The oldest batch with a sequence number above `after`, if any.
    pub fn oldest_after(&self, after: i64) -> Result<Option<StoredBatch>, OutboxError> {
        let row = self
            .conn
            .query_row(
                "SELECT seq, batch_id, kind, enqueued_ms, attempts, body, protocol
                 FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT 1",
                [after],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, u32>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                        r.get::<_, String>(6)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((seq, id, kind, enqueued_ms, attempts, body, protocol)) = row else {
            return Ok(None);
        };
        let bad = |detail: String| OutboxError::BadRow {
            path: self.path.clone(),
            seq,
            detail,
        };
        Ok(Some(StoredBatch {
            seq,
            batch_id: Uuid::parse_str(&id).map_err(|e| bad(format!("batch_id {id:?}: {e}")))?,
            kind: BatchKind::parse(&kind).ok_or_else(|| bad(format!("unknown type {kind:?}")))?,
            enqueued_ms,
            attempts,
            body,
            protocol: Protocol::parse(&protocol)
                .ok_or_else(|| bad(format!("unknown protocol {protocol:?}")))?,
        }))
    }

    /// Deletes a delivered batch and records the success time. False when it was no longer there
    /// (evicted while it was being sent).
    pub fn ack(&mut self, seq: i64, kind: BatchKind) -> Result<bool, OutboxError> {
        let path = self.path.clone();
        let err = |source| OutboxError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let charge = delete_row(&tx, seq).map_err(err)?;
        bump(&tx, &format!("delivered.{kind}"), 1).map_err(err)?;
        set(&tx, "last_success_ms", now_ms()).map_err(err)?;
        tx.commit().map_err(err)?;
        if let Some(c) = charge {
            self.charged = self.charged.saturating_sub(c as u64);
        }
        Ok(charge.is_some())
    }

    /// Records a failed attempt; the batch stays first in line.
    pub fn record_failure(&mut self, seq: i64, error: &str) -> Result<(), OutboxError> {
        self.conn
            .execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
                params![seq, error],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Moves a batch the listener rejected for good to the dead-letter table, dropping the oldest
    /// dead letters beyond [`MAX_DEAD_LETTERS`]. Returns how many were dropped.
    pub fn dead_letter(
        &mut self,
        seq: i64,
        http_status: Option<u16>,
        reason: &str,
    ) -> Result<u64, OutboxError> {
        let path = self.path.clone();
        let err = |source| OutboxError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let kind: Option<String> = tx
            .query_row(
                "INSERT INTO dead_letters (batch_id, kind, collected_at, enqueued_ms, dead_ms,
                     attempts, http_status, reason, charge, body)
                 SELECT batch_id, kind, collected_at, enqueued_ms, ?2, attempts + 1, ?3, ?4,
                     charge, body
                 FROM outbox WHERE seq = ?1 RETURNING kind",
                params![seq, now_ms(), http_status, reason],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        let mut dropped = 0;
        let mut freed = 0;
        if let Some(kind) = kind {
            tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])
                .map_err(err)?;
            bump(&tx, &format!("dead_lettered.{kind}"), 1).map_err(err)?;
            let count: i64 = tx
                .query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))
                .map_err(err)?;
            let count = count.max(0) as u64;
            while dropped < count.saturating_sub(MAX_DEAD_LETTERS) {
                freed += drop_oldest_dead_letter(&tx).map_err(err)?.unwrap_or(0);
                dropped += 1;
            }
        }
        tx.commit().map_err(err)?;
        self.charged = self.charged.saturating_sub(freed);
        Ok(dropped)
    }

    /// Every queued batch in sending order (for tests and tools).
    pub fn queued(&self) -> Result<Vec<(BatchKind, Uuid)>, OutboxError> {
        self.list("SELECT kind, batch_id FROM outbox ORDER BY seq")
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<(BatchKind, Uuid)>, OutboxError> {
        self.list("SELECT kind, batch_id FROM dead_letters ORDER BY seq")
    }

    fn list(&self, sql: &str) -> Result<Vec<(BatchKind, Uuid)>, OutboxError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, id) = row.map_err(|e| self.err(e))?;
            if let (Some(kind), Ok(id)) = (BatchKind::parse(&kind), Uuid::parse_str(&id)) {
                out.push((kind, id));
            }
        }
        Ok(out)
    }

    /// Figures for `status` and `/metrics`.
    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        stats::read(&self.conn, &self.path).map_err(|e| self.err(e))
    }

    /// The persisted breaker state, if one was saved.
    pub fn load_breaker(&self) -> Result<Option<BreakerState>, OutboxError> {
        stats::read_breaker(&self.conn).map_err(|e| self.err(e))
    }

    /// Persists the breaker state (called on every change).
    pub fn save_breaker(&mut self, b: &BreakerState) -> Result<(), OutboxError> {
        let t = b.last_transition.as_ref();
        self.conn
            .execute(
                "INSERT OR REPLACE INTO breaker (id, state, consecutive_failures, opened_ms,
                     transition_from, transition_to, transition_ms, transition_reason)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    b.state.as_str(),
                    b.consecutive_failures,
                    b.opened_ms,
                    t.map(|t| t.from.as_str()),
                    t.map(|t| t.to.as_str()),
                    t.map(|t| t.at_ms),
                    t.map(|t| t.reason.as_str()),
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Adds to a persistent counter.
    pub fn bump(&mut self, name: &str, by: i64) -> Result<(), OutboxError> {
        bump(&self.conn, name, by).map_err(|e| self.err(e))
    }

    /// Keeps the WAL from holding on to space evictions just freed.
    pub(super) fn checkpoint(&self) {
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::debug!(error = %e, "outbox checkpoint skipped");
        }
    }
}
