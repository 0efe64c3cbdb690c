//! Rewriting queued requests in place of others: what a switch of `listener.protocol` needs to
//! re-encode requests written in the other protocol.

use rusqlite::OptionalExtension;

use super::{delete_row, insert_row, NewBatch, Outbox, OutboxError};
use crate::config::Protocol;

impl Outbox {
    /// Sequence numbers of the waiting requests written in `protocol`, oldest first.
    pub fn seqs_in(&self, protocol: Protocol) -> Result<Vec<i64>, OutboxError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq FROM outbox WHERE protocol = ?1 ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([protocol.as_str()], |r| r.get::<_, i64>(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<i64>>>()
            .map_err(|e| self.err(e))
    }

    /// The gzipped body of one waiting request, if it is still there.
    pub fn body(&self, seq: i64) -> Result<Option<Vec<u8>>, OutboxError> {
        self.conn
            .query_row("SELECT body FROM outbox WHERE seq = ?1", [seq], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Replaces one waiting request by `rows` (the same data in another protocol) in one
    /// transaction. The new rows queue behind everything already waiting, and take over its log
    /// cursor, if it had one.
    pub fn replace(&mut self, seq: i64, rows: &[NewBatch]) -> Result<(), OutboxError> {
        let path = self.path.clone();
        let err = |source| OutboxError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let freed = delete_row(&tx, seq).map_err(err)?;
        let mut added = 0;
        let mut first_seq = None;
        for row in rows {
            added += insert_row(&tx, row).map_err(err)?;
            first_seq.get_or_insert(tx.last_insert_rowid());
        }
        if let Some(first_seq) = first_seq {
            super::cursor::carry_over(&tx, seq, first_seq, tx.last_insert_rowid()).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        self.charged = (self.charged + added).saturating_sub(freed.unwrap_or(0) as u64);
        Ok(())
    }
}
