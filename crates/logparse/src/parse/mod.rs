//! Parsers for the three server log formats, sharing one incremental interface.
//!
//! A parser works in two steps on a byte buffer that the caller refills: [`Parser::frame`] finds
//! where the next entry ends (without allocating and without borrowing the buffer, so a reader can
//! refill it when more data is needed), then [`Parser::build`] turns exactly those bytes into a
//! [`LogEntry`] borrowing from them. The same parsers serve the offline `parse-log` command and the
//! live tailer; [`End`] tells them how much of the buffer is final.
//!
//! A line that fits no format becomes an entry with `error_severity` null and its raw text as
//! `message`; an entry larger than the cap is cut to it and marked `truncated`, and the rest of it is
//! skipped (and counted) rather than buffered.

pub mod csv;
pub mod infer;
pub mod json;
pub mod jsoncap;
pub mod prefix;
pub mod stderr;
pub mod syslog;

use super::entry::LogEntry;
use crate::log_format::LogFormat;

/// The default cap on one entry's size (1 MiB).
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// How final the end of the buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// More bytes may follow the buffer.
    More,
    /// The writer is quiet: a buffer ending on a line boundary ends an entry, but a line without its
    /// newline is still being written. (Only stderr needs this: its entries have no end marker.)
    Quiet,
    /// Nothing follows: the rest of the buffer is final, even without a newline.
    Eof,
}

/// What the next bytes of the buffer are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// An entry spans this many bytes; call [`Parser::build`] on exactly them. (Zero when an entry
    /// assembled from absorbed bytes ends at the end of the input.)
    Entry(usize),
    /// This many bytes belong to an entry already cut at the size cap; drop them.
    Skip(usize),
    /// This many bytes were taken into an entry still being assembled (a jsonlog line over the cap
    /// whose long strings are being cut); drop them from the buffer, nothing is lost.
    Absorb(usize),
    /// The buffer ends before the entry does.
    NeedMore,
}

/// One of the three parsers (boxed: their state differs a lot in size).
#[derive(Debug)]
pub enum Parser {
    Stderr(Box<stderr::StderrParser>),
    Csv(Box<csv::CsvParser>),
    Json(json::JsonParser),
    Syslog(Box<syslog::SyslogParser>),
}

impl Parser {
    /// A parser for `format`; `prefix` is the `log_line_prefix` of stderr logs.
    pub fn new(format: LogFormat, prefix: &str, max_entry: usize) -> Parser {
        match format {
            LogFormat::Stderr => {
                Parser::Stderr(Box::new(stderr::StderrParser::new(prefix, max_entry)))
            }
            LogFormat::Csvlog => Parser::Csv(Box::new(csv::CsvParser::new(max_entry))),
            LogFormat::Jsonlog => Parser::Json(json::JsonParser::new(max_entry)),
            LogFormat::Syslog => {
                Parser::Syslog(Box::new(syslog::SyslogParser::new(prefix, max_entry)))
            }
        }
    }

    pub fn format(&self) -> LogFormat {
        match self {
            Parser::Stderr(_) => LogFormat::Stderr,
            Parser::Csv(_) => LogFormat::Csvlog,
            Parser::Json(_) => LogFormat::Jsonlog,
            Parser::Syslog(_) => LogFormat::Syslog,
        }
    }

    /// Finds the extent of the next entry at the start of `buf`. Never returns `NeedMore` for a
    /// non-empty buffer at [`End::Eof`], nor for a buffer longer than the entry cap.
    pub fn frame(&mut self, buf: &[u8], end: End) -> Frame {
        match self {
            Parser::Stderr(p) => p.frame(buf, end),
            Parser::Csv(p) => p.frame(buf, end),
            Parser::Json(p) => p.frame(buf, end),
            Parser::Syslog(p) => p.frame(buf, end),
        }
    }

    /// Builds the entry framed by the last [`Parser::frame`] call from exactly its bytes.
    pub fn build<'a>(&mut self, bytes: &'a [u8]) -> LogEntry<'a> {
        let mut e = LogEntry::default();
        self.build_into(bytes, &mut e);
        e
    }

    /// [`Parser::build`] into `e`, which must be [`LogEntry::default`] (see
    /// [`stderr::StderrParser::build_into`]).
    #[inline]
    pub fn build_into<'a>(&mut self, bytes: &'a [u8], e: &mut LogEntry<'a>) {
        let (mut built, max) = match self {
            // The hot path: built in place, and capped only when it could exceed the cap.
            Parser::Stderr(p) => return p.build_into(bytes, e),
            Parser::Csv(p) => (p.build(bytes), p.max_entry()),
            Parser::Json(p) => (p.build(bytes), p.max_entry()),
            Parser::Syslog(p) => (p.build(bytes), p.max_entry()),
        };
        built.cap(max);
        *e = built;
    }
}

/// Every entry of a whole `input` (at end of file), for the parsers' unit tests.
#[cfg(test)]
pub(crate) fn parse_all(format: LogFormat, prefix: &str, input: &[u8]) -> Vec<LogEntry<'static>> {
    let mut p = Parser::new(format, prefix, 1 << 20);
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        match p.frame(&input[pos..], End::Eof) {
            Frame::Entry(n) => {
                out.push(p.build(&input[pos..pos + n]).into_owned());
                pos += n;
            }
            Frame::Skip(n) | Frame::Absorb(n) => pos += n,
            Frame::NeedMore => return out,
        }
    }
}

/// The `log_line_prefix` inferred from a sample of a stderr or syslog log (see [`infer`]).
pub fn infer_prefix_for(format: LogFormat, sample: &[u8]) -> Inferred {
    match format {
        LogFormat::Syslog => infer_prefix(&syslog::message_lines(sample)),
        _ => infer_prefix(sample),
    }
}

/// Guesses the format from the first non-empty line of a sample.
pub fn detect_format(sample: &[u8]) -> LogFormat {
    let line = sample
        .split(|b| *b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
        .unwrap_or(b"");
    if line.first() == Some(&b'{') {
        return LogFormat::Jsonlog;
    }
    if syslog::header(line).is_some() {
        return LogFormat::Syslog;
    }
    if let Some((_, n)) = crate::time::parse_pg_time(line) {
        if line.get(n) == Some(&b',') {
            return LogFormat::Csvlog;
        }
    }
    LogFormat::Stderr
}

pub use infer::{detect_prefix, infer_prefix, Inferred, COMMON_PREFIXES};
