//! The log cursor as outbox data of its own: where the log reader stood after the entries of a
//! pg_logs batch, stored in the `log_cursor` table in the same transaction as that batch's requests,
//! and read back on start (the newest cursor whose requests still wait). A crash between writing a
//! batch and saving `log_position.json` then cannot make the reader read those entries again.
//!
//! A cursor row covers the outbox rows `first_seq..=last_seq` it was written with; it counts only
//! while one of them waits (the position file covers what was delivered), and rows whose requests
//! are all gone are removed at the next write. Requests without a cursor row (an outbox written by
//! the previous version, which kept the position only inside the request body, or requests first
//! held in memory while the outbox took no writes) are read the old way: [`LogCursor::InBody`].

use rusqlite::{params, Connection, OptionalExtension};

use super::{Outbox, OutboxError};
use crate::batch::BatchKind;

/// Where the newest log cursor of the outbox is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogCursor {
    /// Stored as a cursor row (this version): the position's JSON text.
    Stored(String),
    /// Only inside the newest waiting pg_logs request's gzipped body (`log_position`): written by
    /// the previous version, or held in memory before it was written.
    InBody(Vec<u8>),
}

/// Records `position` as the cursor of the rows `first_seq..=last_seq` just inserted in `tx`, and
/// forgets cursors none of whose rows wait any more.
pub(super) fn write(
    tx: &Connection,
    first_seq: i64,
    last_seq: i64,
    position: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO log_cursor (first_seq, last_seq, position) VALUES (?1, ?2, ?3)",
        params![first_seq, last_seq, position],
    )?;
    tx.execute(
        "DELETE FROM log_cursor WHERE last_seq < ?1 AND NOT EXISTS
           (SELECT 1 FROM outbox o WHERE o.seq BETWEEN log_cursor.first_seq AND log_cursor.last_seq)",
        [first_seq],
    )?;
    Ok(())
}

/// Gives the rows that replaced `old_seq` (`first_seq..=last_seq`, the same data re-encoded) the
/// cursor that covered it, if one did.
pub(super) fn carry_over(
    tx: &Connection,
    old_seq: i64,
    first_seq: i64,
    last_seq: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO log_cursor (first_seq, last_seq, position)
         SELECT ?2, ?3, position FROM log_cursor WHERE ?1 BETWEEN first_seq AND last_seq
         ORDER BY last_seq DESC LIMIT 1",
        params![old_seq, first_seq, last_seq],
    )?;
    Ok(())
}

impl Outbox {
    /// The log cursor of the newest waiting pg_logs request, if any waits: its cursor row, or
    /// (when it has none) its body, to be read the old way.
    pub fn log_cursor(&self) -> Result<Option<LogCursor>, OutboxError> {
        let kind = BatchKind::PgLogs.as_str();
        let newest: Option<i64> = self
            .conn
            .query_row("SELECT max(seq) FROM outbox WHERE kind = ?1", [kind], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))?;
        let Some(newest) = newest else {
            return Ok(None);
        };
        let stored: Option<String> = self
            .conn
            .query_row(
                "SELECT position FROM log_cursor WHERE ?1 BETWEEN first_seq AND last_seq
                 ORDER BY last_seq DESC LIMIT 1",
                [newest],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(position) = stored {
            return Ok(Some(LogCursor::Stored(position)));
        }
        self.conn
            .query_row("SELECT body FROM outbox WHERE seq = ?1", [newest], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()
            .map(|body| body.map(LogCursor::InBody))
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use crate::ship::outbox::NewBatch;

    fn row(kind: BatchKind, body: &[u8]) -> NewBatch {
        NewBatch {
            batch_id: uuid::Uuid::now_v7(),
            kind,
            collected_at: "2026-01-01T00:00:00.000Z".into(),
            body: body.to_vec(),
            protocol: Protocol::Bitville,
        }
    }

    fn open(dir: &tempfile::TempDir) -> Outbox {
        Outbox::open(&dir.path().join("outbox.db"), 64 << 20).unwrap()
    }

    #[test]
    fn the_cursor_is_written_with_its_requests_and_counts_while_one_waits() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = open(&dir);
        assert_eq!(ob.log_cursor().unwrap(), None);
        let parts = [row(BatchKind::PgLogs, b"a"), row(BatchKind::PgLogs, b"b")];
        ob.push_all_with_cursor(&parts, Some(r#"{"offset":1}"#))
            .unwrap();
        ob.push_all(&[row(BatchKind::PgActivity, b"c")]).unwrap();
        let stored = |s: &str| Some(LogCursor::Stored(s.to_string()));
        assert_eq!(ob.log_cursor().unwrap(), stored(r#"{"offset":1}"#));
        ob.push_all_with_cursor(&[row(BatchKind::PgLogs, b"d")], Some(r#"{"offset":2}"#))
            .unwrap();
        assert_eq!(ob.log_cursor().unwrap(), stored(r#"{"offset":2}"#));
        // Delivered in order: the cursor of the requests still waiting, then none.
        let first = ob.oldest().unwrap().unwrap();
        ob.ack(first.seq, first.kind).unwrap();
        assert_eq!(ob.log_cursor().unwrap(), stored(r#"{"offset":2}"#));
        while let Some(b) = ob.oldest().unwrap() {
            ob.ack(b.seq, b.kind).unwrap();
        }
        assert_eq!(ob.log_cursor().unwrap(), None);
        // Cursors of delivered requests are forgotten at the next write.
        ob.push_all_with_cursor(&[row(BatchKind::PgLogs, b"e")], Some(r#"{"offset":3}"#))
            .unwrap();
        let left: i64 = ob
            .conn
            .query_row("SELECT count(*) FROM log_cursor", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1);
    }

    #[test]
    fn an_outbox_of_the_previous_version_is_read_from_the_newest_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        {
            let mut ob = open(&dir);
            ob.push_all(&[row(BatchKind::PgLogs, b"old body")]).unwrap();
            // The previous version's schema had no cursor table.
            ob.conn.execute_batch("DROP TABLE log_cursor").unwrap();
        }
        let mut ob = Outbox::open(&path, 64 << 20).unwrap();
        assert_eq!(
            ob.log_cursor().unwrap(),
            Some(LogCursor::InBody(b"old body".to_vec()))
        );
        // Once this version writes, its cursor row is what counts.
        ob.push_all_with_cursor(&[row(BatchKind::PgLogs, b"new")], Some("{}"))
            .unwrap();
        assert_eq!(
            ob.log_cursor().unwrap(),
            Some(LogCursor::Stored("{}".into()))
        );
    }
}
