//! `log_destination = syslog` as rsyslog writes it to a file:
//! `Nov 28 23:59:01 host postgres[1234]: [7-1] <log_line_prefix>LOG:  message`, in the traditional
//! format (`RSYSLOG_TraditionalFileFormat`, Debian's default) or with an RFC 3339 timestamp
//! (`RSYSLOG_FileFormat`).
//!
//! PostgreSQL (`write_syslog` in `src/backend/utils/error/elog.c`) sends each log message, the same
//! text it writes to stderr, prefix and `DETAIL:`/`STATEMENT:` lines included, as one syslog call
//! per line, each tagged `[seq-chunk]`: `seq` counts the process's messages, `chunk` the pieces of
//! this one (`[chunk]` alone with `syslog_sequence_numbers = off`). A line longer than 900 bytes is
//! cut at the last space before that limit (the next piece starts with that space) or, with no space,
//! at the limit. rsyslog writes control characters as `#` and three octal digits (a tab is `#011`).
//!
//! Framing groups the lines of one message (same pid, chunk numbers counting up from 1); building
//! undoes the splitting and the escaping and hands the rebuilt stderr text to the stderr parser, so
//! every `log_line_prefix` is understood here too. Limits: pieces of one message are assumed to be
//! contiguous in the file (PostgreSQL sends them back to back; another process's line in between
//! ends the entry there). The syslog timestamp has no year and no zone, so `timestamp` comes from
//! the prefix (`%m`, `%t` or `%n`) only; `pid` comes from the header when the prefix has no `%p`.

use memchr::memchr;

use super::stderr::StderrParser;
use super::{End, Frame};
use crate::entry::LogEntry;

/// PostgreSQL's `PG_SYSLOG_LIMIT`: the longest piece `write_syslog` sends.
const PG_SYSLOG_LIMIT: usize = 900;

/// What the syslog header of a line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub pid: u32,
    pub seq: Option<u64>,
    /// The piece number (1 for a message's first line); 1 when the line has no `[N]` tag.
    pub chunk: u32,
    /// Where the message text starts in the line.
    pub text: usize,
}

fn digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// Parses the syslog header of a line, or None when the line has none.
pub fn header(line: &[u8]) -> Option<Header> {
    // The timestamp: `Nov 28 23:59:01` (day space-padded) or RFC 3339 up to the next space.
    let mut pos = if line.first().is_some_and(u8::is_ascii_digit) {
        let sp = memchr(b' ', line)?;
        if sp < 19 || line.get(4) != Some(&b'-') || line.get(10) != Some(&b'T') {
            return None;
        }
        sp + 1
    } else {
        let month = line.get(..3)?;
        if !month.iter().all(u8::is_ascii_alphabetic) || line.get(3) != Some(&b' ') {
            return None;
        }
        let mut p = 4;
        if line.get(p) == Some(&b' ') {
            p += 1;
        }
        let d = digits(&line[p.min(line.len())..]);
        if !(1..=2).contains(&d) {
            return None;
        }
        p += d;
        let t = line.get(p..p + 10)?;
        if t[0] != b' ' || t[3] != b':' || t[6] != b':' || t[9] != b' ' {
            return None;
        }
        p + 10
    };
    // The host, then the tag `ident[pid]: `.
    pos += memchr(b' ', &line[pos..])? + 1;
    let colon = pos + memchr(b':', &line[pos..])?;
    let tag = &line[pos..colon];
    let open = tag.iter().rposition(|c| *c == b'[')?;
    let pid_text = tag.get(open + 1..tag.len().checked_sub(1)?)?;
    if tag.last() != Some(&b']') || pid_text.is_empty() || digits(pid_text) != pid_text.len() {
        return None;
    }
    let pid = std::str::from_utf8(pid_text).ok()?.parse().ok()?;
    pos = colon + 1;
    if line.get(pos) == Some(&b' ') {
        pos += 1;
    }
    // `[seq-chunk] ` or `[chunk] `.
    let (mut seq, mut chunk) = (None, 1);
    if line.get(pos) == Some(&b'[') {
        let a = digits(&line[pos + 1..]);
        let after = pos + 1 + a;
        if a > 0 && line.get(after) == Some(&b'-') {
            let b = digits(&line[after + 1..]);
            let close = after + 1 + b;
            if b > 0 && line.get(close) == Some(&b']') {
                seq = num(&line[pos + 1..after]);
                chunk = num(&line[after + 1..close])?;
                pos = close + 1;
            }
        } else if a > 0 && line.get(after) == Some(&b']') {
            chunk = num(&line[pos + 1..after])?;
            pos = after + 1;
        }
        if pos > 0 && line.get(pos) == Some(&b' ') && line[pos - 1] == b']' {
            pos += 1;
        }
    }
    Some(Header {
        pid,
        seq,
        chunk,
        text: pos,
    })
}

fn num<T: std::str::FromStr>(b: &[u8]) -> Option<T> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Whether `next` is the piece after `prev` of the same message.
fn continues(prev: &Header, next: &Header) -> bool {
    next.pid == prev.pid && next.seq == prev.seq && next.chunk == prev.chunk + 1
}

/// Undoes rsyslog's `#ooo` escaping of control characters, appending to `out`.
fn unescape_into(text: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(off) = memchr(b'#', &text[i..]) {
        let at = i + off;
        out.extend_from_slice(&text[i..at]);
        let code = text
            .get(at + 1..at + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match code
            .map(|d| (d[0] - b'0') as u32 * 64 + (d[1] - b'0') as u32 * 8 + (d[2] - b'0') as u32)
        {
            Some(v) if v < 0x20 || v == 0x7f => {
                out.push(v as u8);
                i = at + 4;
            }
            _ => {
                out.push(b'#');
                i = at + 1;
            }
        }
    }
    out.extend_from_slice(&text[i..]);
}

/// Whether a piece (`next`, unescaped) continues the previous piece's line (`prev`) rather than
/// starting the next line: `write_syslog` cut that line at its 900-byte limit, either at the last
/// space (the piece then starts with it, and that space plus the word after it reach past the limit)
/// or, with no space to cut at, at the limit itself. A line after a newline starts with the tab
/// PostgreSQL puts after every newline of a message, or with the prefix.
fn joins(prev: &[u8], next: &[u8]) -> bool {
    if prev.len() >= PG_SYSLOG_LIMIT - 3 && !prev[1..].iter().any(u8::is_ascii_whitespace) {
        return true;
    }
    if next.first() != Some(&b' ') {
        return false;
    }
    let word = 1 + next[1..]
        .iter()
        .take_while(|c| !c.is_ascii_whitespace())
        .count();
    prev.len() + word > PG_SYSLOG_LIMIT
}

/// Parser state for syslog files.
#[derive(Debug)]
pub struct SyslogParser {
    inner: StderrParser,
    max_entry: usize,
    /// Pieces of a message cut at the cap: (pid, seq, last chunk) still to drop.
    skip: Option<Header>,
    /// The rest of a runaway line (no newline within the cap) to drop.
    skip_line: bool,
    truncated: bool,
    /// The rebuilt stderr text of the entry being built.
    text: Vec<u8>,
    piece: Vec<u8>,
}

impl SyslogParser {
    pub fn new(prefix: &str, max_entry: usize) -> SyslogParser {
        SyslogParser {
            inner: StderrParser::new(prefix, max_entry),
            max_entry: max_entry.max(64),
            skip: None,
            skip_line: false,
            truncated: false,
            text: Vec::new(),
            piece: Vec::new(),
        }
    }

    pub fn max_entry(&self) -> usize {
        self.max_entry
    }

    pub fn frame(&mut self, buf: &[u8], end: End) -> Frame {
        self.truncated = false;
        if buf.is_empty() {
            return Frame::NeedMore;
        }
        let Some(nl) = memchr(b'\n', buf) else {
            if self.skip_line {
                return Frame::Skip(buf.len());
            }
            if end == End::Eof {
                return Frame::Entry(buf.len());
            }
            if buf.len() > self.max_entry {
                self.skip_line = true;
                self.truncated = true;
                return Frame::Entry(buf.len());
            }
            return Frame::NeedMore;
        };
        if std::mem::take(&mut self.skip_line) {
            return Frame::Skip(nl + 1);
        }
        let Some(first) = header(&buf[..nl]) else {
            self.skip = None;
            return Frame::Entry(nl + 1);
        };
        if let Some(prev) = self.skip {
            if continues(&prev, &first) {
                self.skip = Some(first);
                return Frame::Skip(nl + 1);
            }
            self.skip = None;
        }
        let mut last = first;
        let mut pos = nl + 1;
        loop {
            if pos > self.max_entry {
                self.truncated = true;
                self.skip = Some(last);
                return Frame::Entry(pos);
            }
            let rest = &buf[pos..];
            let Some(i) = memchr(b'\n', rest) else {
                if rest.is_empty() && end != End::More {
                    return Frame::Entry(pos);
                }
                if end == End::Eof {
                    return match header(rest) {
                        Some(h) if continues(&last, &h) => Frame::Entry(buf.len()),
                        _ => Frame::Entry(pos),
                    };
                }
                if buf.len() > self.max_entry {
                    return Frame::Entry(pos);
                }
                return Frame::NeedMore;
            };
            match header(&rest[..i]) {
                Some(h) if continues(&last, &h) => {
                    last = h;
                    pos += i + 1;
                }
                _ => return Frame::Entry(pos),
            }
        }
    }

    pub fn build<'a>(&mut self, bytes: &'a [u8]) -> LogEntry<'a> {
        let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        let Some(first) = lines.next() else {
            return LogEntry::unparsed(bytes);
        };
        let Some(h) = header(first) else {
            let mut e = LogEntry::unparsed(bytes);
            e.truncated = self.truncated;
            return e;
        };
        self.text.clear();
        self.piece.clear();
        unescape_into(&first[h.text..], &mut self.piece);
        self.text.extend_from_slice(&self.piece);
        for line in lines {
            let Some(h) = header(line) else { continue };
            let start = self.piece.len();
            unescape_into(&line[h.text..], &mut self.piece);
            let (prev, next) = self.piece.split_at(start);
            if !joins(prev, next) {
                self.text.push(b'\n');
            }
            self.text.extend_from_slice(next);
            self.piece.drain(..start);
        }
        self.text.push(b'\n');
        let n = match self.inner.frame(&self.text, End::Eof) {
            Frame::Entry(n) => n,
            _ => 0,
        };
        let mut e = if n == self.text.len() {
            self.inner.build(&self.text).into_owned()
        } else {
            // The rebuilt text is not one entry under the prefix: keep it whole, unparsed.
            LogEntry::unparsed(&self.text).into_owned()
        };
        if e.error_severity.is_some() && e.pid.is_none() {
            e.pid = Some(h.pid as i64);
        }
        e.truncated |= self.truncated;
        e
    }
}

/// The first lines of the messages in a syslog sample, without their headers: what prefix
/// inference reads.
pub fn message_lines(sample: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sample.len());
    for line in sample.split(|b| *b == b'\n') {
        if let Some(h) = header(line).filter(|h| h.chunk == 1) {
            unescape_into(&line[h.text..], &mut out);
            out.push(b'\n');
        }
    }
    out
}

/// Whether a sample looks like a syslog file (its first non-empty line has a syslog header).
pub fn looks_like_syslog(sample: &[u8]) -> bool {
    sample
        .split(|b| *b == b'\n')
        .find(|l| !l.is_empty())
        .and_then(header)
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(prefix: &str, input: &[u8]) -> Vec<LogEntry<'static>> {
        super::super::parse_all(crate::log_format::LogFormat::Syslog, prefix, input)
    }

    #[test]
    fn reads_headers() {
        let h = header(b"Nov  8 23:59:01 db1 postgres[1234]: [7-2] #011x").unwrap();
        assert_eq!((h.pid, h.seq, h.chunk), (1234, Some(7), 2));
        let h = header(b"2026-11-28T23:59:01.123456+00:00 db1 postgres[9]: [3] LOG:  x").unwrap();
        assert_eq!((h.pid, h.seq, h.chunk), (9, None, 3));
        assert!(header(b"2026-11-28 23:59:01.123 UTC [9] LOG:  x").is_none());
        assert!(header(b"#011continued").is_none());
    }

    #[test]
    fn joins_pieces_and_unescapes_tabs() {
        let log = "Nov 28 23:59:01 h postgres[77]: [5-1] user=u,db=d,app=a b,client=::1 ERROR:  division by zero\n\
Nov 28 23:59:01 h postgres[77]: [5-2] user=u,db=d,app=a b,client=::1 STATEMENT:  select 1/0\n\
Nov 28 23:59:01 h postgres[77]: [5-3] #011  from t\n\
Nov 28 23:59:02 h postgres[78]: [1-1] user=,db=,app=,client= LOG:  checkpoint starting: time\n";
        let e = parse_all("user=%u,db=%d,app=%a,client=%h ", log.as_bytes());
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].message, "division by zero");
        assert_eq!(e[0].statement.as_deref(), Some("select 1/0\n  from t"));
        assert_eq!(e[0].pid, Some(77));
        assert_eq!(e[0].application_name.as_deref(), Some("a b"));
        assert_eq!(e[0].remote_host.as_deref(), Some("::1"));
        assert_eq!(e[1].event, None);
        assert_eq!(e[1].pid, Some(78));
        assert_eq!(e[1].user, None);
    }

    #[test]
    fn rejoins_lines_split_at_the_limit() {
        // A 2000-byte word with no space is cut hard at 900; words are cut at the last space.
        let word = "x".repeat(2000);
        let words: Vec<String> = (0..300).map(|i| format!("w{i}")).collect();
        let text = format!("LOG:  statement: select '{word}', '{}'\n", words.join(" "));
        let mut chunks: Vec<String> = Vec::new();
        let mut line = text.trim_end_matches('\n');
        while !line.is_empty() {
            let mut n = line.len().min(PG_SYSLOG_LIMIT);
            if n < line.len() && !line.as_bytes()[n].is_ascii_whitespace() {
                if let Some(i) = line.as_bytes()[1..n]
                    .iter()
                    .rposition(u8::is_ascii_whitespace)
                {
                    n = i + 1;
                }
            }
            chunks.push(line[..n].to_string());
            line = &line[n..];
        }
        assert!(chunks.len() > 3);
        let log: String = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| format!("Nov 28 23:59:01 h postgres[5]: [9-{}] {c}\n", i + 1))
            .collect();
        let e = parse_all("", log.as_bytes());
        assert_eq!(e.len(), 1);
        assert_eq!(format!("LOG:  {}\n", e[0].message), text);
    }
}
