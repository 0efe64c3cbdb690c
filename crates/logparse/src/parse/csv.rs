//! csvlog: one CSV record per entry, text fields quoted (with `""` inside), fields spanning lines.
//!
//! PostgreSQL 9.0-12 write 23 columns, 13 adds `backend_type`, 14 adds `leader_pid` and `query_id`
//! (26 columns); records of 23 to 26 columns are accepted. Hand-written rather than the `csv` crate
//! because the tailer needs exact byte offsets of record ends, fields borrowed from the input, and a
//! size cap that holds while a quoted field is still open; PostgreSQL's quoting is regular enough that
//! a record scanner is short. An unquoted empty field is absent; a quoted empty one is an empty
//! string (jsonlog's `ps` is `""` where csvlog's is `""`).

use std::borrow::Cow;

use memchr::{memchr, memchr2};

use super::{End, Frame};
use crate::entry::{severity, state_code, LogEntry};
use crate::time::parse_pg_time;

const MAX_COLUMNS: usize = 26;
const MIN_COLUMNS: usize = 23;

#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    end: u32,
    quoted: bool,
    escaped: bool,
}

enum Scan {
    Record(usize, usize),
    Incomplete,
    Malformed,
}

/// Parser state for csvlog.
#[derive(Debug)]
pub struct CsvParser {
    max_entry: usize,
    /// After a record cut at the cap: skip to the next line that starts a record.
    resync: bool,
    spans: [Span; MAX_COLUMNS],
    columns: usize,
    truncated: bool,
}

impl CsvParser {
    pub fn new(max_entry: usize) -> CsvParser {
        CsvParser {
            max_entry: max_entry.max(64),
            resync: false,
            spans: [Span::default(); MAX_COLUMNS],
            columns: 0,
            truncated: false,
        }
    }

    /// The cap on one entry's text.
    pub fn max_entry(&self) -> usize {
        self.max_entry
    }

    pub fn frame(&mut self, buf: &[u8], end: End) -> Frame {
        self.columns = 0;
        self.truncated = false;
        if buf.is_empty() {
            return Frame::NeedMore;
        }
        if self.resync {
            return self.resync(buf, end);
        }
        let limit = buf.len().min(self.max_entry);
        match self.scan(&buf[..limit]) {
            Scan::Record(n, cols) => {
                self.columns = cols;
                Frame::Entry(n)
            }
            Scan::Incomplete if buf.len() > self.max_entry => {
                self.truncated = true;
                self.resync = true;
                Frame::Entry(self.max_entry)
            }
            Scan::Incomplete if end != End::Eof => Frame::NeedMore,
            Scan::Incomplete | Scan::Malformed => {
                // Not a record: the line becomes an unparsed entry.
                match memchr(b'\n', buf) {
                    Some(i) => Frame::Entry(i + 1),
                    None if end == End::Eof => Frame::Entry(buf.len()),
                    None if buf.len() > self.max_entry => {
                        self.truncated = true;
                        self.resync = true;
                        Frame::Entry(self.max_entry)
                    }
                    None => Frame::NeedMore,
                }
            }
        }
    }

    fn resync(&mut self, buf: &[u8], end: End) -> Frame {
        let mut from = 0;
        while let Some(i) = memchr(b'\n', &buf[from..]) {
            let next = from + i + 1;
            let rest = &buf[next..];
            if rest.len() < 40 && end != End::Eof {
                return if next > 1 {
                    Frame::Skip(next - 1)
                } else {
                    Frame::NeedMore
                };
            }
            if parse_pg_time(rest).is_some_and(|(_, n)| rest.get(n) == Some(&b',')) {
                self.resync = false;
                return Frame::Skip(next);
            }
            from = next;
        }
        if end == End::Eof {
            self.resync = false;
        }
        Frame::Skip(buf.len())
    }

    fn scan(&mut self, buf: &[u8]) -> Scan {
        let mut pos = 0;
        let mut col = 0;
        loop {
            if col == MAX_COLUMNS {
                return Scan::Malformed;
            }
            let mut span = Span::default();
            if buf.get(pos) == Some(&b'"') {
                let mut j = pos + 1;
                span.quoted = true;
                loop {
                    let Some(q) = memchr(b'"', &buf[j..]) else {
                        return Scan::Incomplete;
                    };
                    let q = j + q;
                    match buf.get(q + 1) {
                        Some(b'"') => {
                            span.escaped = true;
                            j = q + 2;
                        }
                        None => return Scan::Incomplete,
                        Some(_) => {
                            span.start = (pos + 1) as u32;
                            span.end = q as u32;
                            pos = q + 1;
                            break;
                        }
                    }
                }
            } else {
                let Some(k) = memchr2(b',', b'\n', &buf[pos..]) else {
                    return Scan::Incomplete;
                };
                if buf[pos..pos + k].contains(&b'"') {
                    return Scan::Malformed;
                }
                span.start = pos as u32;
                span.end = (pos + k) as u32;
                pos += k;
            }
            self.spans[col] = span;
            col += 1;
            match buf.get(pos) {
                Some(b',') => pos += 1,
                Some(b'\n') => {
                    return if col >= MIN_COLUMNS {
                        Scan::Record(pos + 1, col)
                    } else {
                        Scan::Malformed
                    }
                }
                Some(b'\r') if buf.get(pos + 1) == Some(&b'\n') => {
                    return if col >= MIN_COLUMNS {
                        Scan::Record(pos + 2, col)
                    } else {
                        Scan::Malformed
                    }
                }
                None => return Scan::Incomplete,
                Some(_) => return Scan::Malformed,
            }
        }
    }

    pub fn build<'a>(&mut self, bytes: &'a [u8]) -> LogEntry<'a> {
        if self.columns == 0 {
            let mut e = LogEntry::unparsed(bytes);
            e.truncated = self.truncated;
            return e;
        }
        let cols = self.columns;
        let spans = self.spans;
        // Text of column `i` (1-based as in the documentation): None when absent or unquoted-empty.
        let field = |i: usize| -> Option<Cow<'a, str>> {
            if i > cols {
                return None;
            }
            let s = spans[i - 1];
            let raw = &bytes[s.start as usize..s.end as usize];
            if raw.is_empty() && !s.quoted {
                return None;
            }
            let text = String::from_utf8_lossy(raw);
            Some(if s.escaped {
                Cow::Owned(text.replace("\"\"", "\""))
            } else {
                text
            })
        };
        let nonempty = |i: usize| field(i).filter(|t| !t.is_empty());
        let num = |i: usize| field(i).and_then(|t| t.parse::<i64>().ok());
        let time =
            |i: usize| field(i).and_then(|t| parse_pg_time(t.as_bytes()).and_then(|(ts, _)| ts));
        let mut e = LogEntry {
            timestamp: time(1),
            user: nonempty(2),
            dbname: nonempty(3),
            pid: num(4),
            session_id: nonempty(6),
            line_num: num(7).and_then(|n| u64::try_from(n).ok()),
            ps: field(8),
            session_start: time(9),
            vxid: nonempty(10),
            txid: num(11).and_then(|n| u64::try_from(n).ok()),
            error_severity: field(12).and_then(|s| severity(s.as_bytes())),
            state_code: field(13).and_then(state_code),
            message: field(14).unwrap_or_default(),
            detail: field(15),
            hint: field(16),
            internal_query: field(17),
            internal_position: num(18).and_then(|n| u32::try_from(n).ok()),
            context: field(19),
            statement: field(20),
            cursor_position: num(21).and_then(|n| u32::try_from(n).ok()),
            application_name: nonempty(23),
            backend_type: nonempty(24),
            leader_pid: num(25),
            query_id: num(26),
            truncated: self.truncated,
            ..LogEntry::default()
        };
        if let Some(from) = nonempty(5) {
            split_connection_from(&mut e, from);
        }
        if let Some(loc) = nonempty(22) {
            e.set_location(&loc);
        }
        e.cap(self.max_entry);
        e
    }
}

/// `connection_from` is `host:port`, or just `host` (`[local]`).
fn split_connection_from<'a>(e: &mut LogEntry<'a>, from: Cow<'a, str>) {
    if let Some((host, port)) = from.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty() {
            e.remote_port = port.parse().ok();
            e.remote_host = Some(match &from {
                Cow::Borrowed(b) => Cow::Borrowed(&b[..host.len()]),
                Cow::Owned(_) => Cow::Owned(host.to_string()),
            });
            return;
        }
    }
    e.remote_host = Some(from);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_with_quotes_and_newlines() {
        let log = b"2026-11-27 03:05:14.910 UTC,\"postgres\",\"postgres\",11311,\"127.0.0.1:5123\",6b08f36a.2c2f,3,\"SELECT\",2026-11-27 03:05:14 UTC,3/0,0,ERROR,42601,\"syntax \"\"x\"\"\nline2\",,,,,,\"selec 1\",1,,\"psql\",\"client backend\",,0\nnot csv\n";
        let mut p = CsvParser::new(1 << 20);
        let Frame::Entry(n) = p.frame(log, End::More) else {
            panic!()
        };
        let e = p.build(&log[..n]);
        assert_eq!(e.message, "syntax \"x\"\nline2");
        assert_eq!(e.remote_host.as_deref(), Some("127.0.0.1"));
        assert_eq!(e.remote_port, Some(5123));
        assert_eq!(e.cursor_position, Some(1));
        assert_eq!(e.query_id, Some(0));
        assert_eq!(e.leader_pid, None);
        let rest = &log[n..];
        let Frame::Entry(m) = p.frame(rest, End::Eof) else {
            panic!()
        };
        let e = p.build(&rest[..m]);
        assert_eq!(e.error_severity, None);
        assert_eq!(e.message, "not csv");
    }

    #[test]
    fn waits_for_an_open_quote() {
        let log = b"2026-11-27 03:05:14.910 UTC,\"postgres\",\"postgres\",1,,x,3,\"SELECT\",2026-11-27 03:05:14 UTC,3/0,0,LOG,00000,\"open";
        let mut p = CsvParser::new(1 << 20);
        assert_eq!(p.frame(log, End::More), Frame::NeedMore);
    }
}
