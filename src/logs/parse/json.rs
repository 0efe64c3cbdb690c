//! jsonlog (PostgreSQL 15+): one JSON object per line, keys already the entry's names.
//!
//! Strings without escapes are borrowed from the line. `timestamp` and `session_start` are
//! normalised to RFC 3339 UTC, and `state_code` `00000` is left out (jsonlog already leaves it out;
//! this keeps the three formats equal). A line that is not a JSON object is kept as an unparsed entry.

use std::borrow::Cow;

use memchr::memchr;
use serde::Deserialize;

use super::time::parse_pg_time;
use super::{End, Frame};
use crate::logs::entry::{cap_text, severity, state_code, trim_eol, LogEntry};

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dbname: Option<Cow<'a, str>>,
    pid: Option<i64>,
    #[serde(borrow)]
    remote_host: Option<Cow<'a, str>>,
    remote_port: Option<u32>,
    #[serde(borrow)]
    session_id: Option<Cow<'a, str>>,
    line_num: Option<u64>,
    #[serde(borrow)]
    ps: Option<Cow<'a, str>>,
    #[serde(borrow)]
    session_start: Option<Cow<'a, str>>,
    #[serde(borrow)]
    vxid: Option<Cow<'a, str>>,
    txid: Option<u64>,
    #[serde(borrow)]
    error_severity: Option<Cow<'a, str>>,
    #[serde(borrow)]
    state_code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    detail: Option<Cow<'a, str>>,
    #[serde(borrow)]
    hint: Option<Cow<'a, str>>,
    #[serde(borrow)]
    internal_query: Option<Cow<'a, str>>,
    internal_position: Option<u32>,
    #[serde(borrow)]
    context: Option<Cow<'a, str>>,
    #[serde(borrow)]
    statement: Option<Cow<'a, str>>,
    cursor_position: Option<u32>,
    #[serde(borrow)]
    func_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    file_name: Option<Cow<'a, str>>,
    file_line_num: Option<u32>,
    #[serde(borrow)]
    application_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    backend_type: Option<Cow<'a, str>>,
    leader_pid: Option<i64>,
    query_id: Option<i64>,
}

/// Parser state for jsonlog.
#[derive(Debug)]
pub struct JsonParser {
    max_entry: usize,
    skip_line: bool,
    truncated: bool,
}

impl JsonParser {
    pub fn new(max_entry: usize) -> JsonParser {
        JsonParser {
            max_entry: max_entry.max(64),
            skip_line: false,
            truncated: false,
        }
    }

    /// The cap on one entry's text.
    pub fn max_entry(&self) -> usize {
        self.max_entry
    }

    pub fn frame(&mut self, buf: &[u8], end: End) -> Frame {
        self.truncated = false;
        if buf.is_empty() {
            return Frame::NeedMore;
        }
        let nl = memchr(b'\n', buf);
        if self.skip_line {
            return match nl {
                Some(i) => {
                    self.skip_line = false;
                    Frame::Skip(i + 1)
                }
                None => Frame::Skip(buf.len()),
            };
        }
        match nl {
            Some(i) if i <= self.max_entry => Frame::Entry(i + 1),
            None if end == End::Eof && buf.len() <= self.max_entry => Frame::Entry(buf.len()),
            None if buf.len() <= self.max_entry => Frame::NeedMore,
            _ => {
                // Longer than the cap: keep the first part as an unparsed, truncated entry.
                self.truncated = true;
                self.skip_line = nl.is_none();
                let n = nl.map_or(buf.len(), |i| i + 1);
                Frame::Entry(n)
            }
        }
    }

    pub fn build<'a>(&mut self, bytes: &'a [u8]) -> LogEntry<'a> {
        if self.truncated {
            let mut e = LogEntry::unparsed(&bytes[..bytes.len().min(self.max_entry)]);
            cap_text(&mut e.message, self.max_entry);
            e.truncated = true;
            return e;
        }
        let line = trim_eol(bytes);
        let Ok(r) = serde_json::from_slice::<Record<'a>>(line) else {
            return LogEntry::unparsed(line);
        };
        let time = |t: Option<Cow<'a, str>>| {
            t.and_then(|t| parse_pg_time(t.as_bytes()).and_then(|(ts, _)| ts))
        };
        LogEntry {
            timestamp: time(r.timestamp),
            user: r.user,
            dbname: r.dbname,
            pid: r.pid,
            remote_host: r.remote_host,
            remote_port: r.remote_port,
            session_id: r.session_id,
            line_num: r.line_num,
            ps: r.ps,
            session_start: time(r.session_start),
            vxid: r.vxid,
            txid: r.txid,
            error_severity: r.error_severity.and_then(|s| severity(s.as_bytes())),
            state_code: r.state_code.and_then(state_code),
            message: r.message.unwrap_or_default(),
            detail: r.detail,
            hint: r.hint,
            internal_query: r.internal_query,
            internal_position: r.internal_position,
            context: r.context,
            statement: r.statement,
            cursor_position: r.cursor_position,
            func_name: r.func_name,
            file_name: r.file_name,
            file_line_num: r.file_line_num,
            application_name: r.application_name,
            backend_type: r.backend_type,
            leader_pid: r.leader_pid,
            query_id: r.query_id,
            ..LogEntry::default()
        }
    }
}
