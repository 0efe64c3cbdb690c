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
//!     let mut b = stamp.batch(BatchKind::PgLogs, server, records);
//!     b.extra.insert("log_position".into(), serde_json::to_value(&batch.position)?);
//!     outbox.enqueue(b)?;                                 // durable before the next line
//!     tailer.commit(&batch.position)?;                    // fsync'd under agent.state_dir
//! }
//! ```
//!
//! - [`tail::Tailer::take_batch`] returns what is readable now (at most `max_entries`, and at most
//!   `logs.max_batch_bytes` of serialized JSON with the envelope), never waiting;
//!   [`tail::Tailer::next_batch`] waits (tokio timers, polling every `poll_interval`) until
//!   `max_entries` entries (`logs.max_buffered_entries`) or `max_batch_bytes` are buffered (the early
//!   batch) or the deadline passes. Memory is bounded by one batch's worth plus one entry and one
//!   read buffer; a batch cut short by either bound carries the position after its last entry.
//! - Taking a batch does not move the committed position. Until [`tail::Tailer::commit`] is called
//!   with the batch's position, a restart (or kill -9) reads those entries again: nothing is lost.
//! - Nothing is repeated either if the daemon stores the position with the batch (`log_position`)
//!   and, on start, passes the newest one still in the outbox to [`tail::Tailer::reconcile`]: a crash
//!   between enqueue and commit then resumes after the enqueued batch.
//! - Each batch's entries have passed [`finish_entry`] and are JSON values ready for `Batch::data`.
//! - A read error never discards entries already read: the batch carrying them also carries the
//!   error (`read_error`); the caller stores and commits it as any other, then waits before reading
//!   again, which resumes just after them. An error with nothing read is returned as `Err`.

pub mod marks;
pub mod position;
pub mod reader;
pub mod settings;
pub mod source;
pub mod stats;
pub mod tail;

// The parser crate's modules, where the agent always had them.
pub use pga_logparse::{classify, entry, json_out, parse};

pub use entry::LogEntry;

use crate::batch::correlated::{Correlated, Detail, LogStatement};
use crate::correlation;
use crate::privacy::fingerprint::Fingerprint;
use crate::privacy::{LogFields, Privacy, PrivacyCounts, SqlSource};

/// The settings [`finish_entry`] needs.
#[derive(Debug, Clone, Default)]
pub struct Finisher {
    /// `correlation.keys`: comment keys whose value is the correlation ID.
    pub correlation_keys: Vec<String>,
    /// The `[privacy]` policy: obfuscation of statement texts and redaction of log secrets. The
    /// default is the configuration's default (obfuscate, redact credentials and parsing errors).
    pub privacy: Privacy,
}

/// The last step of every entry, in this order: classification (`event`, `duration_ms`,
/// `extracted`), correlation tags from the statement text (before anything rewrites that text), then
/// the privacy step (obfuscation of `statement`/`internal_query`/the message's SQL and of a JSON
/// plan's SQL strings, redaction of secrets). Returns what the privacy step masked and redacted, for
/// the caller to count.
pub fn finish_entry(e: &mut LogEntry<'_>, f: &Finisher) -> PrivacyCounts {
    classify::classify(e);
    let keys = &f.correlation_keys;
    let plan_text = || {
        e.extracted
            .as_ref()
            .and_then(|x| x.get("plan")?.get("Query Text")?.as_str())
    };
    let (correlation, source, separate) = {
        // auto_explain: the statement is the plan's "Query Text".
        let sql = statement_text(e).or_else(plan_text);
        // Only comments carry tags: text without one is not handed over (same result, without
        // building a searcher per entry).
        let commented = sql.filter(|s| correlation::has_comment(s));
        let correlation = correlation::extract_from(commented, e.application_name.as_deref(), keys);
        // The statement is fingerprinted in the lexing pass that masks it, when it is the
        // `statement` field or the SQL of the message; any other text (a JSON plan's) on its own.
        let source = match sql {
            None => SqlSource::None,
            Some(_) if e.statement.is_some() => SqlSource::Statement,
            Some(s) => match crate::privacy::messages::message_sql(&e.message) {
                Some((at, crate::privacy::messages::SqlPart::Statement))
                    if e.message.get(at..).is_some_and(|m| std::ptr::eq(m, s)) =>
                {
                    SqlSource::Message
                }
                _ => SqlSource::None,
            },
        };
        let separate = match source {
            SqlSource::None => sql.map(crate::privacy::fingerprint::fingerprint_u64),
            _ => None,
        };
        (correlation, source, separate)
    };
    // Serializing a struct of strings cannot fail; were it to, the entry would go without tags.
    e.correlation = correlation.and_then(|c| entry::RawJson::of(&c).ok());
    let (mut counts, fingerprint) = f.privacy.apply_to_log_fingerprinting(
        LogFields {
            sqlstate: e.state_code.as_deref(),
            message: &mut e.message,
            detail: &mut e.detail,
            hint: &mut e.hint,
            context: &mut e.context,
            statement: &mut e.statement,
            query: &mut e.internal_query,
        },
        source,
    );
    e.fingerprint = separate.or(fingerprint).map(Fingerprint);
    if f.privacy.obfuscate_queries {
        mask_json_plan(e, &mut counts);
    }
    counts
}

/// auto_explain's plan tree (`extracted.plan`, from any format) carries the statement as "Query
/// Text" and SQL with literals in conditions, filters and output lists: mask every string in it
/// that may hold SQL (`privacy::plan::mask_plan_tree`).
fn mask_json_plan(e: &mut LogEntry<'_>, counts: &mut PrivacyCounts) {
    if let Some(plan) = e.extracted.as_mut().and_then(|x| x.get_mut("plan")) {
        let opts = crate::privacy::ObfuscateOptions::default();
        crate::privacy::plan::mask_plan_tree(plan, opts, counts);
    }
}

/// The SQL text an entry carries: `statement`, else the text a `duration: ... statement:` or
/// `statement:` message logs.
pub fn statement_text<'e>(e: &'e LogEntry<'_>) -> Option<&'e str> {
    statement_of(e.statement.as_deref(), &e.message)
}

/// The correlated statement of an entry with a correlation ID and a duration
/// (`log_min_duration_statement`, auto_explain): its text ([`statement_text`], else auto_explain's
/// `Query Text`), read while the entry is typed, for the batch's [`Batch::correlated`].
///
/// [`Batch::correlated`]: crate::batch::Batch::correlated
pub fn correlated_statement(e: &LogEntry<'_>) -> Option<Correlated> {
    let correlation = serde_json::from_str(e.correlation.as_ref()?.0.get()).ok()?;
    let logged_at = e.timestamp?.to_rfc3339();
    let query = statement_text(e).or_else(|| {
        e.extracted
            .as_ref()?
            .get("plan")?
            .get("Query Text")?
            .as_str()
    });
    Correlated::log_entry(LogStatement {
        correlation,
        logged_at: std::str::from_utf8(&logged_at).ok()?,
        duration_ms: e.duration_ms?,
        query,
        detail: Detail::default()
            .put("pid", &e.pid)
            .put("database", &e.dbname)
            .put("user", &e.user)
            .put("application_name", &e.application_name)
            .put("event", &e.event)
            .put("error_severity", &e.error_severity)
            .put("query_id", &e.query_id)
            .put("fingerprint", &e.fingerprint)
            .put("logged_at", &e.timestamp)
            .put(
                "plan_id",
                &e.extracted.as_ref().and_then(|x| x.get("plan_id")),
            )
            .put("plan", &e.extracted.as_ref().and_then(|x| x.get("plan"))),
    })
}

/// [`statement_text`] from an entry's `statement` field and message (pure text work, in the
/// parser crate so the record types can use it without importing `logs`).
pub use pga_logparse::entry::statement_of;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{AgentInfo, Batch, BatchKind, Record};
    use crate::log_format::LogFormat;
    use crate::logs::parse::Parser;
    use crate::logs::reader::EntryReader;

    /// What the tailer takes from entries while typed is what a batch read back from their JSON
    /// rebuilds: durations with a logged statement, an auto_explain plan, entries without one.
    #[test]
    fn typed_log_statements_equal_those_rebuilt_from_the_stored_json() {
        let lines = [
            r#"{"timestamp":"2026-11-28 10:00:02.000 UTC","user":"php","dbname":"shop","pid":42,"error_severity":"LOG","message":"duration: 2000.000 ms  statement: SELECT 1 /* correlation_id=x */","application_name":"web","query_id":77}"#,
            r#"{"timestamp":"2026-11-28 10:00:03.500 UTC","pid":43,"error_severity":"LOG","message":"duration: 12.5 ms  execute s1: SELECT 2 /* correlation_id=y */"}"#,
            r#"{"timestamp":"2026-11-28 10:00:04.000 UTC","pid":44,"error_severity":"LOG","message":"statement: SELECT 3 /* correlation_id=z */"}"#,
            r#"{"timestamp":"2026-11-28 10:00:05.000 UTC","pid":45,"error_severity":"LOG","message":"duration: 3.0 ms  statement: SELECT 4"}"#,
            r#"{"timestamp":"2026-11-28 10:00:06.000 UTC","pid":46,"error_severity":"LOG","message":"duration: 7.0 ms  plan:\nQuery Text: SELECT 5 /* correlation_id=p */\nResult  (cost=0.00..0.01 rows=1 width=4)"}"#,
        ];
        let text = lines.join("\n") + "\n";
        let parser = Parser::new(LogFormat::Jsonlog, "", 1 << 20);
        let mut reader = EntryReader::new(text.as_bytes(), parser, 0);
        let finisher = Finisher {
            correlation_keys: vec!["correlation_id".into()],
            privacy: crate::privacy::Privacy::default(),
        };
        let (mut typed, mut data) = (Vec::new(), Vec::new());
        while let Some((mut e, _)) = reader.next_entry().unwrap() {
            finish_entry(&mut e, &finisher);
            typed.extend(correlated_statement(&e));
            data.push(Record::new(&e).unwrap());
        }
        assert_eq!(data.len(), 5);
        assert_eq!(typed.len(), 3, "{typed:?}");
        assert_eq!(typed[0].correlation_id, "x");
        assert_eq!(typed[0].duration_ms, Some(2000.0));
        assert!(typed[1]
            .query
            .as_deref()
            .is_some_and(|q| q.starts_with("SELECT")));
        // The text-format plan of an auto_explain entry goes with its correlated statement.
        let plan = serde_json::to_string(&typed[2].detail).unwrap();
        assert!(
            plan.contains("plan_id") && plan.contains("\"Node Type\":\"Result\""),
            "{plan}"
        );
        let mut b = Batch::new(BatchKind::PgLogs, "p", AgentInfo::new("h"), None, 60, data);
        b.restore_correlated();
        assert_eq!(typed, b.correlated);
    }

    /// Issue 23's privacy hole: real auto_explain output of PostgreSQL 15 in every plan format
    /// (text, JSON, YAML, XML), read from stderr, csvlog and jsonlog: after `finish_entry` with the
    /// default privacy policy, none of the statements' literals appears anywhere in the entries, and
    /// text and JSON plans carry a tree, a `plan_id`, the fingerprint and the query ID.
    #[test]
    fn auto_explain_literals_appear_nowhere_in_any_format_or_destination() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crates/logparse/tests/fixtures/auto_explain"
        );
        let prefix = "%m [%p] %q%u@%d %Q ";
        for (file, format) in [
            ("pg15.log", LogFormat::Stderr),
            ("pg15.csv", LogFormat::Csvlog),
            ("pg15.json", LogFormat::Jsonlog),
        ] {
            let text = std::fs::read(format!("{dir}/{file}")).unwrap();
            let parser = Parser::new(format, prefix, 1 << 20);
            let mut reader = EntryReader::new(&text[..], parser, 0);
            let finisher = Finisher::default();
            let (mut plans, mut trees, mut out) = (0, 0, String::new());
            while let Some((mut e, _)) = reader.next_entry().unwrap() {
                finish_entry(&mut e, &finisher);
                if e.event == Some("auto_explain") {
                    plans += 1;
                    let x = e.extracted.as_ref();
                    if x.is_some_and(|x| x.contains_key("plan_id")) {
                        trees += 1;
                        assert!(
                            e.fingerprint.is_some(),
                            "{file}: a plan without fingerprint"
                        );
                        assert!(e.query_id.is_some() || format == LogFormat::Stderr);
                    }
                }
                out.push_str(&serde_json::to_string(&e).unwrap());
                out.push('\n');
            }
            assert!(plans >= 32, "{file}: {plans} auto_explain entries");
            // Every plan (32, in text, JSON, YAML and XML) becomes a tree with a plan_id.
            assert!(trees >= 32, "{file}: {trees} plan trees");
            for literal in ["918273645", "secret-", "lit-", "zz9"] {
                assert!(
                    !out.contains(literal),
                    "{file}: {literal:?} left the host:\n{out}"
                );
            }
        }
    }
}
