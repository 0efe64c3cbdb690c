//! The newest waiting request, for the fresh share of a drain pass
//! ([`crate::ship::storage::queue`]): delivery reads the outbox oldest-first, and this is the one
//! read from the other end.

use rusqlite::OptionalExtension;

use super::{Outbox, OutboxError, StoredBatch};
use crate::batch::BatchKind;

impl Outbox {
    /// The newest request with `above < seq < below`, pg_logs excepted (the log reader resumes after
    /// the newest pg_logs request still waiting, so those go oldest-first only).
    pub fn newest_between(
        &self,
        above: i64,
        below: i64,
    ) -> Result<Option<StoredBatch>, OutboxError> {
        let seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM outbox WHERE seq > ?1 AND seq < ?2 AND kind != ?3
                 ORDER BY seq DESC LIMIT 1",
                rusqlite::params![above, below, BatchKind::PgLogs.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match seq {
            Some(seq) => self.oldest_after(seq - 1),
            None => Ok(None),
        }
    }

    /// The newest sequence number in the queue (0 when empty).
    pub fn max_seq(&self) -> Result<i64, OutboxError> {
        self.conn
            .query_row("SELECT coalesce(max(seq), 0) FROM outbox", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}
