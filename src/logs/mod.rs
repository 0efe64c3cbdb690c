//! The server log pipeline: `tail` follows the log files, `parse` turns bytes into entries (stderr
//! with any `log_line_prefix`, csvlog, jsonlog), `classify` derives `event` and numbers, and
//! [`finish_entry`] is the one step every entry passes before it leaves the parser.
//!
//! Entries use jsonlog's key names whatever the source format ([`entry::LogEntry`]), so an entry
//! parsed from stderr or csvlog equals what jsonlog wrote for the same event on every field that
//! format carries.
//!
//! # Contract with the daemon (shipping)
//!
//! ```text
//! let mut tailer = Tailer::open(settings)?;              // loads the committed position
//! tailer.reconcile(newest_pg_logs_position_in_outbox);    // optional, closes the crash window
//! loop {
//!     let batch = tailer.next_batch(max_entries, cycle_deadline).await?;   // or take_batch() offline
//!     if batch.entries.is_empty() { continue }
//!     let mut b = Batch::new(BatchKind::PgLogs, ..., batch.entries);
//!     b.extra.insert("log_position".into(), serde_json::to_value(&batch.position)?);
//!     outbox.enqueue(b)?;                                 // durable before the next line
//!     tailer.commit(&batch.position)?;                    // fsync'd under agent.state_dir
//! }
//! ```
//!
//! - [`tail::Tailer::take_batch`] returns what is readable now (at most `max_entries`), never
//!   waiting; [`tail::Tailer::next_batch`] waits (tokio timers, polling every `poll_interval`) until
//!   `max_entries` entries are buffered (`logs.max_buffered_entries`: the early batch) or the
//!   deadline passes. Memory is bounded by `max_entries` entries plus one read buffer.
//! - Taking a batch does not move the committed position. Until [`tail::Tailer::commit`] is called
//!   with the batch's position, a restart (or kill -9) reads those entries again: nothing is lost.
//! - Nothing is repeated either if the daemon stores the position with the batch (`log_position`)
//!   and, on start, passes the newest one still in the outbox to [`tail::Tailer::reconcile`]: a crash
//!   between enqueue and commit then resumes after the enqueued batch.
//! - Each batch's entries have passed [`finish_entry`] and are JSON values ready for `Batch::data`.

pub mod classify;
pub mod cli;
pub mod entry;
pub mod parse;
pub mod position;
pub mod reader;
pub mod settings;
pub mod source;
pub mod stats;
pub mod tail;

pub use entry::LogEntry;

use crate::correlation;
pub use parse::LogFormat;

/// The settings [`finish_entry`] needs.
#[derive(Debug, Clone, Default)]
pub struct Finisher {
    /// `correlation.keys`: comment keys whose value is the correlation ID.
    pub correlation_keys: Vec<String>,
}

/// The last step of every entry, in this order: classification (`event`, `duration_ms`,
/// `extracted`), correlation tags from the statement text (before anything rewrites that text), then
/// the privacy step (obfuscation of `statement`/`internal_query`/the message's SQL, redaction of
/// secrets), which belongs to the privacy module (issue 7) and is applied here once it exists.
pub fn finish_entry(e: &mut LogEntry<'_>, f: &Finisher) {
    classify::classify(e);
    let keys = &f.correlation_keys;
    e.correlation = match statement_text(e) {
        Some(sql) => correlation::extract(sql, keys),
        // auto_explain: the statement is the plan's "Query Text".
        None => e
            .extracted
            .as_ref()
            .and_then(|x| x.get("plan")?.get("Query Text")?.as_str())
            .and_then(|sql| correlation::extract(sql, keys)),
    };
}

/// The SQL text an entry carries: `statement`, else the text a `duration: ... statement:` or
/// `statement:` message logs.
pub fn statement_text<'e>(e: &'e LogEntry<'_>) -> Option<&'e str> {
    if let Some(s) = e.statement.as_deref() {
        return Some(s);
    }
    let m: &str = &e.message;
    let m = m
        .strip_prefix("duration: ")
        .and_then(|r| r.split_once(" ms  ").map(|(_, r)| r))
        .unwrap_or(m);
    for marker in ["statement: ", "execute "] {
        if let Some(rest) = m.strip_prefix(marker) {
            return Some(match marker {
                "execute " => rest.split_once(": ").map_or(rest, |(_, sql)| sql),
                _ => rest,
            });
        }
    }
    None
}
