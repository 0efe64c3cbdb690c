//! jsonlog (PostgreSQL 15+): one JSON object per line, keys already the entry's names.
//!
//! Strings without escapes are borrowed from the line. `timestamp` and `session_start` are
//! normalised to RFC 3339 UTC, and `state_code` `00000` is left out (jsonlog already leaves it out;
//! this keeps the three formats equal). A line that is not a JSON object is kept as an unparsed entry.

use std::borrow::Cow;

use memchr::memchr;
use serde::Deserialize;

use super::jsoncap::JsonCapper;
use super::{End, Frame};
use crate::entry::{cap_text, severity, state_code, trim_eol, LogEntry};
use crate::time::parse_pg_time;

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
    truncated: bool,
    /// A line longer than the cap, being read with its long strings cut.
    capping: Option<JsonCapper>,
    /// A capped line complete and ready for `build`.
    ready: Option<Vec<u8>>,
}

impl JsonParser {
    pub fn new(max_entry: usize) -> JsonParser {
        JsonParser {
            max_entry: max_entry.max(64),
            truncated: false,
            capping: None,
            ready: None,
        }
    }

    /// The cap on one entry's text.
    pub fn max_entry(&self) -> usize {
        self.max_entry
    }

    pub fn frame(&mut self, buf: &[u8], end: End) -> Frame {
        self.truncated = false;
        self.ready = None;
        if buf.is_empty() {
            if end == End::Eof && self.capping.is_some() {
                // The input ended inside a capped line: what was taken in is the entry.
                self.ready = self.capping.take().map(|c| c.out);
                self.truncated = true;
                return Frame::Entry(0);
            }
            return Frame::NeedMore;
        }
        let nl = memchr(b'\n', buf);
        if self.capping.is_none() {
            match nl {
                Some(i) if i <= self.max_entry => return Frame::Entry(i + 1),
                None if end == End::Eof && buf.len() <= self.max_entry => {
                    return Frame::Entry(buf.len())
                }
                None if buf.len() <= self.max_entry => return Frame::NeedMore,
                // Longer than the cap: read it through the capper.
                _ => self.capping = Some(JsonCapper::default()),
            }
        }
        let (per_string, total) = (self.max_entry / 2, self.max_entry * 4);
        let Some(capper) = self.capping.as_mut() else {
            return Frame::NeedMore;
        };
        match nl {
            Some(i) => capper.feed(&buf[..i], per_string, total),
            None => capper.feed(buf, per_string, total),
        }
        let n = nl.map_or(buf.len(), |i| i + 1);
        if nl.is_some() || end == End::Eof {
            self.ready = self.capping.take().map(|c| c.out);
            self.truncated = true;
            Frame::Entry(n)
        } else {
            Frame::Absorb(n)
        }
    }

    pub fn build<'a>(&mut self, bytes: &'a [u8]) -> LogEntry<'a> {
        if let Some(line) = self.ready.take() {
            let mut e = match serde_json::from_slice::<Record<'_>>(&line) {
                Ok(r) => entry(r).into_owned(),
                Err(_) => LogEntry::unparsed(&line[..line.len().min(self.max_entry)]).into_owned(),
            };
            cap_text(&mut e.message, self.max_entry);
            e.truncated = true;
            return e;
        }
        let line = trim_eol(bytes);
        match serde_json::from_slice::<Record<'a>>(line) {
            Ok(r) => entry(r),
            Err(_) => LogEntry::unparsed(line),
        }
    }
}

fn entry(r: Record<'_>) -> LogEntry<'_> {
    let time = |t: Option<Cow<'_, str>>| {
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
