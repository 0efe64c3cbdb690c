//! The log entry: PostgreSQL's `jsonlog` keys, whichever format the entry was parsed from, plus the
//! derived `event`, `duration_ms`, `correlation` and `extracted` fields.
//!
//! Text fields borrow from the parser's input where they can (`Cow`), so parsing allocates only for
//! multi-line or escaped text; [`LogEntry::into_owned`] detaches an entry that must outlive its buffer.
//! Absent fields are left out of the JSON, as jsonlog does, except `error_severity`, `message`,
//! `event` and `correlation`, which are always present (null when unknown).

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::time::Timestamp;
use pga_privacy::fingerprint::Fingerprint;

type Text<'a> = Option<Cow<'a, str>>;

/// One server log entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LogEntry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dbname: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_host: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_num: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ps: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_start: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxid: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txid: Option<u64>,
    /// DEBUG, INFO, NOTICE, WARNING, ERROR, LOG, FATAL or PANIC; null for a line that fits no format.
    pub error_severity: Option<&'static str>,
    /// SQLSTATE; left out when it is `00000`, as jsonlog does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_code: Text<'a>,
    pub message: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_query: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_position: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor_position: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub func_name: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_name: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_line_num: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_name: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_type: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_pid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_id: Option<i64>,
    /// Derived: the snake_case class of the entry (see `logs::classify`).
    pub event: Option<&'static str>,
    /// Derived: the duration the entry reports (statement, checkpoint, vacuum, lock wait), in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Derived: the correlation tags found in the statement (or the logged statement text), as the
    /// agent serialized them (the parser does not know their type; see [`RawJson`]).
    pub correlation: Option<RawJson>,
    /// Derived: the fingerprint of the statement text (see `privacy::fingerprint`), taken before
    /// obfuscation; groups entries of the same statement and joins them to activity records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
    /// Derived: numbers and structures the classifier pulled out of the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extracted: Option<Map<String, Value>>,
    /// The entry exceeded the size cap and its text was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A derived value that the agent fills in after parsing (the correlation tags), held as its JSON
/// text and written out verbatim: `serde_json` output is byte for byte that of the value itself.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<serde_json::value::RawValue>);

impl RawJson {
    /// `value` serialized (compact, as `serde_json::to_writer` writes it).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<RawJson> {
        serde_json::value::to_raw_value(value).map(RawJson)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.get() == other.get()
    }
}

fn own(t: Text<'_>) -> Text<'static> {
    t.map(|c| Cow::Owned(c.into_owned()))
}

impl LogEntry<'_> {
    /// An entry for a line that fits no format: raw text in `message`, `error_severity` null.
    pub fn unparsed(raw: &[u8]) -> LogEntry<'_> {
        LogEntry {
            message: String::from_utf8_lossy(trim_eol(raw)),
            ..LogEntry::default()
        }
    }

    /// Detaches the entry from the buffer it was parsed from.
    pub fn into_owned(self) -> LogEntry<'static> {
        LogEntry {
            timestamp: self.timestamp,
            user: own(self.user),
            dbname: own(self.dbname),
            pid: self.pid,
            remote_host: own(self.remote_host),
            remote_port: self.remote_port,
            session_id: own(self.session_id),
            line_num: self.line_num,
            ps: own(self.ps),
            session_start: self.session_start,
            vxid: own(self.vxid),
            txid: self.txid,
            error_severity: self.error_severity,
            state_code: own(self.state_code),
            message: Cow::Owned(self.message.into_owned()),
            detail: own(self.detail),
            hint: own(self.hint),
            internal_query: own(self.internal_query),
            internal_position: self.internal_position,
            context: own(self.context),
            statement: own(self.statement),
            cursor_position: self.cursor_position,
            func_name: own(self.func_name),
            file_name: own(self.file_name),
            file_line_num: self.file_line_num,
            application_name: own(self.application_name),
            backend_type: own(self.backend_type),
            leader_pid: self.leader_pid,
            query_id: self.query_id,
            event: self.event,
            duration_ms: self.duration_ms,
            correlation: self.correlation,
            fingerprint: self.fingerprint,
            extracted: self.extracted,
            truncated: self.truncated,
        }
    }

    /// Cuts every text field to `max` bytes, marking the entry truncated if any was cut.
    pub fn cap(&mut self, max: usize) {
        let mut cut = cap_text(&mut self.message, max);
        for t in [
            &mut self.statement,
            &mut self.detail,
            &mut self.hint,
            &mut self.context,
            &mut self.internal_query,
            &mut self.application_name,
            &mut self.ps,
            &mut self.user,
            &mut self.dbname,
            &mut self.remote_host,
        ]
        .into_iter()
        .flatten()
        {
            cut |= cap_text(t, max);
        }
        self.truncated |= cut;
    }

    /// Sets `func_name`, `file_name` and `file_line_num` from a `LOCATION` text
    /// (`exec_simple_query, postgres.c:1234`).
    pub fn set_location(&mut self, loc: &str) {
        if let Some((func, file)) = loc.rsplit_once(", ") {
            self.func_name = Some(Cow::Owned(func.to_string()));
            match file.rsplit_once(':') {
                Some((name, line)) if line.bytes().all(|b| b.is_ascii_digit()) => {
                    self.file_name = Some(Cow::Owned(name.to_string()));
                    self.file_line_num = line.parse().ok();
                }
                _ => self.file_name = Some(Cow::Owned(file.to_string())),
            }
        }
    }
}

/// The severities PostgreSQL writes, as static strings so entries need not own them.
pub fn severity(word: &[u8]) -> Option<&'static str> {
    Some(match word {
        b"LOG" => "LOG",
        b"ERROR" => "ERROR",
        b"WARNING" => "WARNING",
        b"FATAL" => "FATAL",
        b"NOTICE" => "NOTICE",
        b"INFO" => "INFO",
        b"DEBUG" => "DEBUG",
        b"PANIC" => "PANIC",
        _ => return None,
    })
}

/// The SQLSTATE as jsonlog reports it: `00000` (successful completion) is left out.
pub fn state_code(code: Cow<'_, str>) -> Option<Cow<'_, str>> {
    (code != "00000" && !code.is_empty()).then_some(code)
}

pub(crate) fn trim_eol(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// Cuts `s` to at most `max` bytes on a character boundary; true when it cut.
pub fn cap_text(s: &mut Cow<'_, str>, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    match s {
        Cow::Borrowed(b) => *b = &b[..end],
        Cow::Owned(o) => o.truncate(end),
    }
    true
}

/// The SQL text an entry carries, from its `statement` field and message: `statement`, else the
/// text a `duration: ... statement:` or `statement:` / `execute <name>:` message logs.
pub fn statement_of<'e>(statement: Option<&'e str>, message: &'e str) -> Option<&'e str> {
    if let Some(s) = statement {
        return Some(s);
    }
    let m = message;
    let m = m
        .strip_prefix("duration: ")
        .and_then(|r| pga_privacy::messages::duration_end(r).map(|i| &r[i + 5..]))
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
