//! The stderr format: `log_line_prefix` + `SEVERITY:  message`, continued by tab-indented lines and by
//! prefixed `DETAIL:`, `HINT:`, `QUERY:`, `CONTEXT:`, `LOCATION:` and `STATEMENT:` lines.
//!
//! Framing classifies each line (entry start, auxiliary line, continuation, or none of these) with
//! the compiled prefix and remembers where each part lies; building copies text only when an entry
//! spans several lines. ` at character N` at the end of the message moves to `cursor_position` (or
//! `internal_position` when a `QUERY:` line is present), and the SQLSTATE that
//! `log_error_verbosity = verbose` puts before the message moves to `state_code`. `%l` is not
//! reported as `line_num`: in stderr it counts physical lines, not entries as jsonlog does.

use std::borrow::Cow;

use memchr::memchr;

use super::prefix::{Field, Prefix, PrefixFields};
use super::{End, Frame};
use crate::entry::{severity, state_code, trim_eol, LogEntry};
use crate::time::{parse_epoch, parse_pg_time, TimeCache};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aux {
    Detail,
    Hint,
    Query,
    Context,
    Location,
    Statement,
}

fn aux(word: &[u8]) -> Option<Aux> {
    Some(match word {
        b"DETAIL" => Aux::Detail,
        b"HINT" => Aux::Hint,
        b"QUERY" => Aux::Query,
        b"CONTEXT" => Aux::Context,
        b"LOCATION" => Aux::Location,
        b"STATEMENT" => Aux::Statement,
        _ => return None,
    })
}

/// The `WORD:  ` a prefixed line continues with, and where its text starts.
fn keyword(rest: &[u8]) -> Option<(&[u8], usize)> {
    let n = rest.iter().take(10).position(|b| *b == b':')?;
    (rest.get(n + 1..n + 3) == Some(b"  ")).then(|| (&rest[..n], n + 3))
}

fn accept(rest: &[u8]) -> bool {
    keyword(rest).is_some_and(|(w, _)| severity(w).is_some() || aux(w).is_some())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Start(&'static str),
    Aux(Aux),
    Cont,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Line {
    kind: Kind,
    /// Where the text after `WORD:  ` (or after the tab) starts, relative to the entry.
    text: usize,
    /// End of the line without its newline, relative to the entry.
    end: usize,
}

/// Parser state for stderr logs.
#[derive(Debug)]
pub struct StderrParser {
    prefix: Prefix,
    max_entry: usize,
    /// The rest of a line that was cut at the cap.
    skip_line: bool,
    /// Continuation lines of an entry that was cut at the cap.
    skip_continuations: bool,
    lines: Vec<Line>,
    fields: PrefixFields,
    truncated: bool,
    /// The classification of the line that ended the last entry, which starts the next call's
    /// buffer: (line length, kind, text offset, prefix fields). Saves matching each line twice.
    lookahead: Option<(usize, Kind, usize, PrefixFields)>,
    /// The second of the last `%t`/`%m` timestamp read.
    times: TimeCache,
}

impl StderrParser {
    pub fn new(prefix: &str, max_entry: usize) -> StderrParser {
        StderrParser {
            prefix: Prefix::compile(prefix),
            max_entry: max_entry.max(64),
            skip_line: false,
            skip_continuations: false,
            lines: Vec::new(),
            fields: Default::default(),
            truncated: false,
            lookahead: None,
            times: TimeCache::default(),
        }
    }

    /// True when `line` starts an entry under this prefix.
    pub fn is_entry_line(&self, line: &[u8]) -> bool {
        matches!(self.classify(line, None), (Kind::Start(_), _))
    }

    /// How `line` fits this prefix: None when it neither starts an entry nor is a prefixed
    /// auxiliary line (`DETAIL:`, `STATEMENT:`, ...); else how many prefix fields of an entry's
    /// first line have a value (0 for an auxiliary line). Prefix inference scores with this.
    pub fn fit(&self, line: &[u8]) -> Option<usize> {
        let mut fields = PrefixFields::default();
        match self.classify(line, Some(&mut fields)) {
            (Kind::Start(_), _) => Some(fields.iter().filter(|f| f.is_some()).count()),
            (Kind::Aux(_), _) => Some(0),
            _ => None,
        }
    }

    /// How many escapes the prefix has.
    pub fn prefix_escapes(&self) -> usize {
        self.prefix.escapes()
    }

    fn classify(&self, line: &[u8], fields: Option<&mut PrefixFields>) -> (Kind, usize) {
        if line.first() == Some(&b'\t') {
            return (Kind::Cont, 1);
        }
        let mut scratch: PrefixFields;
        let f = match fields {
            Some(out) => out,
            None => {
                scratch = PrefixFields::default();
                &mut scratch
            }
        };
        let Some(at) = self.prefix.matches_into(line, &accept, f) else {
            return (Kind::Other, 0);
        };
        let Some((word, text)) = keyword(&line[at..]) else {
            return (Kind::Other, 0);
        };
        if let Some(sev) = severity(word) {
            return (Kind::Start(sev), at + text);
        }
        match aux(word) {
            Some(a) => (Kind::Aux(a), at + text),
            None => (Kind::Other, 0),
        }
    }

    /// The cap on one entry's text.
    pub fn max_entry(&self) -> usize {
        self.max_entry
    }

    pub fn frame(&mut self, buf: &[u8], end: End) -> Frame {
        self.lines.clear();
        self.truncated = false;
        let lookahead = self.lookahead.take();
        if buf.is_empty() {
            return Frame::NeedMore;
        }
        let first_end = memchr(b'\n', buf);
        if self.skip_line {
            return match first_end {
                Some(i) => {
                    self.skip_line = false;
                    Frame::Skip(i + 1)
                }
                None => Frame::Skip(buf.len()),
            };
        }
        let (line_len, next) = match first_end {
            Some(i) => (i, i + 1),
            None if end == End::Eof => (buf.len(), buf.len()),
            None if buf.len() > self.max_entry => {
                // A runaway line: keep its first part, drop the rest as it arrives.
                self.skip_line = true;
                let mut fields = PrefixFields::default();
                let (kind, text) = self.classify(&buf[..self.max_entry], Some(&mut fields));
                let starts = matches!(kind, Kind::Start(_));
                if self.skip_continuations && !starts && !matches!(kind, Kind::Other) {
                    return Frame::Skip(buf.len());
                }
                // Its continuation lines, if any, belong to the cut entry.
                self.skip_continuations = starts;
                self.truncated = true;
                self.fields = fields;
                self.lines.push(Line {
                    kind: if starts { kind } else { Kind::Other },
                    text: if starts { text } else { 0 },
                    end: self.max_entry,
                });
                return Frame::Entry(buf.len());
            }
            None => return Frame::NeedMore,
        };
        let mut fields = PrefixFields::default();
        let (kind, text) = match lookahead {
            // Valid only for the same line, which the caller's contract (consume exactly the
            // framed bytes) guarantees; the length check guards against misuse.
            Some((len, kind, text, f)) if len == line_len => {
                fields = f;
                (kind, text)
            }
            _ => self.classify(&buf[..line_len], Some(&mut fields)),
        };
        if self.skip_continuations {
            if matches!(kind, Kind::Cont | Kind::Aux(_)) {
                return Frame::Skip(next);
            }
            self.skip_continuations = false;
        }
        self.lines.push(Line {
            kind,
            text,
            end: line_len,
        });
        if !matches!(kind, Kind::Start(_)) {
            return Frame::Entry(next);
        }
        self.fields = fields;
        let mut pos = next;
        loop {
            if pos - self.lines[0].text > self.max_entry {
                self.truncated = true;
                self.skip_continuations = true;
                return Frame::Entry(pos);
            }
            let rest = &buf[pos..];
            let Some(i) = memchr(b'\n', rest) else {
                if rest.is_empty() && end != End::More {
                    return Frame::Entry(pos);
                }
                if end == End::Eof {
                    // A final line without its newline: part of this entry if it continues it.
                    let (kind, text) = self.classify(rest, None);
                    if matches!(kind, Kind::Cont | Kind::Aux(_)) {
                        self.lines.push(Line {
                            kind,
                            text: pos + text,
                            end: buf.len(),
                        });
                        return Frame::Entry(buf.len());
                    }
                    return Frame::Entry(pos);
                }
                if buf.len() > self.max_entry {
                    // The next line is a runaway: this entry ends here unless that line continues it.
                    if matches!(self.classify(rest, None).0, Kind::Cont | Kind::Aux(_)) {
                        self.truncated = true;
                        self.skip_continuations = true;
                    }
                    return Frame::Entry(pos);
                }
                return Frame::NeedMore;
            };
            let mut next_fields = PrefixFields::default();
            let (kind, text) = self.classify(&rest[..i], Some(&mut next_fields));
            if !matches!(kind, Kind::Cont | Kind::Aux(_)) {
                self.lookahead = Some((i, kind, text, next_fields));
                return Frame::Entry(pos);
            }
            self.lines.push(Line {
                kind,
                text: pos + text,
                end: pos + i,
            });
            pos += i + 1;
        }
    }

    /// The entry framed by the last [`StderrParser::frame`] call, its text fields cut to the cap.
    pub fn build<'a>(&mut self, bytes: &'a [u8]) -> LogEntry<'a> {
        let mut e = LogEntry::default();
        self.build_into(bytes, &mut e);
        e
    }

    /// [`StderrParser::build`] into `e`, which must be [`LogEntry::default`]: the hot path fills
    /// the entry where the caller keeps it instead of moving it out (the struct is large).
    #[inline]
    pub fn build_into<'a>(&mut self, bytes: &'a [u8], e: &mut LogEntry<'a>) {
        self.assemble(bytes, e);
        // Every text field comes from these bytes and is at most three times their length (an
        // invalid byte becomes U+FFFD): an entry that small cannot exceed the cap.
        if bytes.len().saturating_mul(3) > self.max_entry {
            e.cap(self.max_entry);
        }
    }

    #[inline]
    fn assemble<'a>(&mut self, bytes: &'a [u8], e: &mut LogEntry<'a>) {
        let Some(first) = self.lines.first().copied() else {
            *e = LogEntry::unparsed(bytes);
            return;
        };
        let Kind::Start(sev) = first.kind else {
            *e = LogEntry::unparsed(&bytes[..first.end.min(bytes.len())]);
            e.truncated = self.truncated;
            return;
        };
        e.error_severity = Some(sev);
        // The first line is checked for UTF-8 once; its fields and message are slices of it.
        let line = LineText::new(&bytes[..first.end]);
        apply_prefix(e, &line, &self.fields, &mut self.times);
        let mut target: Option<Aux> = None;
        let mut message = line.get(first.text, trim_eol(line.bytes).len().max(first.text));
        let mut parts: [Option<Cow<'a, str>>; 6] = Default::default();
        for line in &self.lines[1..] {
            let t = text(&bytes[line.text..line.end]);
            match line.kind {
                Kind::Cont => {
                    let field = match target {
                        None => &mut message,
                        Some(a) => parts[a as usize].get_or_insert(Cow::Borrowed("")),
                    };
                    let s = field.to_mut();
                    s.push('\n');
                    s.push_str(&t);
                }
                Kind::Aux(a) => {
                    target = Some(a);
                    parts[a as usize] = Some(t);
                }
                _ => {}
            }
        }
        if let Some(code) = verbose_sqlstate(&message) {
            if e.state_code.is_none() {
                e.state_code = state_code(Cow::Owned(code.to_string()));
            }
            match &mut message {
                Cow::Borrowed(b) => *b = &b[7..],
                Cow::Owned(o) => {
                    o.drain(..7);
                }
            }
        }
        let [detail, hint, query, context, location, statement] = parts;
        if let Some(pos) = strip_position(&mut message) {
            if query.is_some() {
                e.internal_position = Some(pos);
            } else if statement.is_some() {
                e.cursor_position = Some(pos);
            }
        }
        e.message = message;
        e.detail = detail;
        e.hint = hint;
        e.internal_query = query;
        e.context = context;
        e.statement = statement;
        if let Some(loc) = location {
            e.set_location(&loc);
        }
        if self.truncated {
            e.truncated = true;
        }
    }
}

fn text(b: &[u8]) -> Cow<'_, str> {
    str_of(trim_eol(b))
}

/// `42601: ` before the message, written when log_error_verbosity is verbose.
fn verbose_sqlstate(m: &str) -> Option<&str> {
    let b = m.as_bytes();
    let code = b.get(..5)?;
    (b.get(5..7) == Some(b": ")
        && code
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()))
    .then(|| &m[..5])
}

/// Removes a trailing ` at character N` and returns N.
fn strip_position(m: &mut Cow<'_, str>) -> Option<u32> {
    const MARK: &str = " at character ";
    if !m.as_bytes().last().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let at = m.rfind(MARK)?;
    let n: u32 = m[at + MARK.len()..].parse().ok()?;
    match m {
        Cow::Borrowed(b) => *b = &b[..at],
        Cow::Owned(o) => o.truncate(at),
    }
    Some(n)
}

/// A line's bytes and, when they are valid UTF-8, its text: fields are cut from it without
/// checking each again.
struct LineText<'a> {
    bytes: &'a [u8],
    text: Option<&'a str>,
}

impl<'a> LineText<'a> {
    fn new(bytes: &'a [u8]) -> LineText<'a> {
        LineText {
            bytes,
            text: std::str::from_utf8(bytes).ok(),
        }
    }

    /// The text of `start..end` (lossy when the line is not UTF-8).
    fn get(&self, start: usize, end: usize) -> Cow<'a, str> {
        match self.text.and_then(|t| t.get(start..end)) {
            Some(t) => Cow::Borrowed(t),
            None => str_of(&self.bytes[start..end]),
        }
    }

    /// The text of a prefix field, if it has a value.
    fn field(&self, f: &PrefixFields, k: Field) -> Option<Cow<'a, str>> {
        f[k as usize].map(|(s, e)| self.get(s as usize, e as usize))
    }
}

fn get<'a>(line: &'a [u8], f: &PrefixFields, k: Field) -> Option<&'a [u8]> {
    f[k as usize].map(|(s, e)| &line[s as usize..e as usize])
}

/// UTF-8 text, borrowed when valid (`from_utf8` is much faster than `from_utf8_lossy`'s chunking).
fn str_of(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

fn num<T: std::str::FromStr>(b: &[u8]) -> Option<T> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// `[unknown]` is what PostgreSQL prints for a session whose user, database or application is
/// not known yet; jsonlog leaves those keys out.
fn known(text: Cow<'_, str>) -> Option<Cow<'_, str>> {
    (text != "[unknown]").then_some(text)
}

fn apply_prefix<'a>(
    e: &mut LogEntry<'a>,
    text: &LineText<'a>,
    f: &PrefixFields,
    times: &mut TimeCache,
) {
    let line = text.bytes;
    let g = |k| get(line, f, k);
    let t = |k| text.field(f, k);
    e.application_name = t(Field::AppName).and_then(known);
    e.user = t(Field::User).and_then(known);
    e.dbname = t(Field::Db).and_then(known);
    if let Some(hp) = g(Field::RemoteHostPort) {
        match hp.strip_suffix(b")").and_then(|s| {
            let open = s.iter().rposition(|b| *b == b'(')?;
            Some((&s[..open], &s[open + 1..]))
        }) {
            Some((host, port)) if !port.is_empty() && port.iter().all(u8::is_ascii_digit) => {
                e.remote_host = Some(str_of(host));
                e.remote_port = num(port);
            }
            _ => e.remote_host = Some(str_of(hp)),
        }
    }
    if let Some(h) = t(Field::RemoteHost) {
        e.remote_host = Some(h);
    }
    e.backend_type = t(Field::BackendType);
    e.pid = g(Field::Pid).and_then(num);
    e.leader_pid = g(Field::LeaderPid).and_then(num);
    if let Some(t) = g(Field::Epoch) {
        e.timestamp = parse_epoch(t).map(|(ts, _)| ts);
    }
    if let Some(t) = g(Field::TimeNoMs) {
        e.timestamp = times.parse(t);
    }
    if let Some(t) = g(Field::TimeMs) {
        e.timestamp = times.parse(t);
    }
    e.ps = t(Field::Ps);
    e.state_code = t(Field::SqlState).and_then(state_code);
    e.session_id = t(Field::SessionId);
    e.session_start = g(Field::SessionStart).and_then(|t| parse_pg_time(t).and_then(|(ts, _)| ts));
    e.vxid = t(Field::Vxid);
    e.txid = g(Field::Txid).and_then(num);
    e.query_id = g(Field::QueryId).and_then(num);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(prefix: &str, input: &[u8]) -> Vec<LogEntry<'static>> {
        super::super::parse_all(crate::log_format::LogFormat::Stderr, prefix, input)
    }

    #[test]
    fn joins_multi_line_entries() {
        let log = b"2026-11-27 03:06:44.543 UTC [12722] postgres@db ERROR:  division by zero\n\
2026-11-27 03:06:44.543 UTC [12722] postgres@db CONTEXT:  SQL statement \"SELECT 1/0\"\n\
\tPL/pgSQL function inline_code_block line 1 at PERFORM\n\
2026-11-27 03:06:44.543 UTC [12722] postgres@db STATEMENT:  do $$begin\n\
\tperform 1/0; end$$;\n\
garbage line\n\
2026-11-27 03:06:44.555 UTC [12724] postgres@db ERROR:  42601: syntax error at or near \"selec\" at character 1\n\
2026-11-27 03:06:44.555 UTC [12724] postgres@db STATEMENT:  selec 1\n";
        let e = parse_all("%m [%p] %q%u@%d ", log);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].message, "division by zero");
        assert_eq!(
            e[0].context.as_deref(),
            Some("SQL statement \"SELECT 1/0\"\nPL/pgSQL function inline_code_block line 1 at PERFORM")
        );
        assert_eq!(
            e[0].statement.as_deref(),
            Some("do $$begin\nperform 1/0; end$$;")
        );
        assert_eq!(e[0].pid, Some(12722));
        assert_eq!(e[1].error_severity, None);
        assert_eq!(e[1].message, "garbage line");
        assert_eq!(e[2].message, "syntax error at or near \"selec\"");
        assert_eq!(e[2].state_code.as_deref(), Some("42601"));
        assert_eq!(e[2].cursor_position, Some(1));
    }

    #[test]
    fn keeps_the_prefix_of_a_runaway_line() {
        let mut log =
            b"2026-11-27 03:06:44.543 UTC [77] LOG:  duration: 1.0 ms  statement: select '"
                .to_vec();
        log.extend(std::iter::repeat_n(b'x', 5000));
        log.extend_from_slice(b"'\n\tand more\n2026-11-27 03:06:44.544 UTC [77] LOG:  next\n");
        let mut p = StderrParser::new("%m [%p] ", 1000);
        let mut out = Vec::new();
        let mut pos = 0;
        // Fed in pieces smaller than the line, as a reader would.
        let mut avail = 1500;
        loop {
            let end = if avail >= log.len() {
                End::Eof
            } else {
                End::More
            };
            match p.frame(&log[pos..avail.min(log.len())], end) {
                Frame::Entry(n) => {
                    out.push(p.build(&log[pos..pos + n]).into_owned());
                    pos += n;
                }
                Frame::Skip(n) | Frame::Absorb(n) => pos += n,
                Frame::NeedMore if avail >= log.len() => break,
                Frame::NeedMore => {}
            }
            avail = (avail.max(pos) + 1500).min(log.len() + 1500);
        }
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].pid, Some(77));
        assert_eq!(out[0].error_severity, Some("LOG"));
        assert!(out[0].truncated);
        assert!(out[0].message.len() <= 1000);
        assert_eq!(out[1].message, "next");
    }

    #[test]
    fn caps_runaway_entries() {
        let mut log = b"LOG:  start\n".to_vec();
        for _ in 0..100 {
            log.extend_from_slice(b"\tcontinued line of a very long statement\n");
        }
        log.extend_from_slice(b"LOG:  next\n");
        let mut p = StderrParser::new("", 200);
        let mut out = Vec::new();
        let mut pos = 0;
        while let f @ (Frame::Entry(_) | Frame::Skip(_)) = p.frame(&log[pos..], End::Eof) {
            match f {
                Frame::Entry(n) => {
                    out.push(p.build(&log[pos..pos + n]).into_owned());
                    pos += n
                }
                Frame::Skip(n) | Frame::Absorb(n) => pos += n,
                Frame::NeedMore => unreachable!(),
            }
        }
        assert_eq!(out.len(), 2);
        assert!(out[0].truncated);
        assert!(out[0].message.len() <= 200);
        assert_eq!(out[1].message, "next");
    }
}
