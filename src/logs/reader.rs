//! A reader that turns a byte stream into entries with a bounded buffer: it refills in chunks, frames
//! with the format's parser, and hands out entries borrowing from its buffer together with the byte
//! offset just past each one (what the tailer persists).
//!
//! The buffer never holds more than one entry cap plus one chunk, whatever the input size, and
//! shrinks back once a long entry has been handed out.

use std::io::{self, Read};

use super::entry::LogEntry;
use super::parse::{End, Frame, Parser};
use super::stats::LogStats;

/// Bytes read per refill by default (bulk parsing: `parse-log`).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Reads entries from any `Read`.
#[derive(Debug)]
pub struct EntryReader<R> {
    src: R,
    parser: Parser,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The source returned end of file.
    src_done: bool,
    /// Offset in the source of `buf[start]`.
    consumed: u64,
    /// Offset just past the last entry or skipped bytes handed out: where reading can resume. Bytes
    /// absorbed into an entry still being assembled do not move it.
    boundary: u64,
    /// How to treat the end of data when the source is at end of file right now.
    at_end: End,
    /// Bytes read per refill.
    chunk: usize,
    /// What this reader has met since its counts were last taken.
    stats: LogStats,
}

impl<R: Read> EntryReader<R> {
    /// `offset` is the source position the first byte read will have (for positions).
    pub fn new(src: R, parser: Parser, offset: u64) -> EntryReader<R> {
        EntryReader {
            src,
            parser,
            buf: Vec::new(),
            start: 0,
            end: 0,
            src_done: false,
            consumed: offset,
            boundary: offset,
            at_end: End::Eof,
            chunk: CHUNK_BYTES,
            stats: LogStats::default(),
        }
    }

    /// What this reader has met since the last call (entries, unparsed lines, cut entries).
    pub fn take_stats(&mut self) -> LogStats {
        std::mem::take(&mut self.stats)
    }

    /// Reads `bytes` per refill instead of [`CHUNK_BYTES`]: a smaller buffer for a reader that
    /// lives as long as the process (the daemon's tailer).
    pub fn with_chunk(mut self, bytes: usize) -> EntryReader<R> {
        self.chunk = bytes.max(1);
        self
    }

    /// What the end of the source means: [`End::Eof`] for a finished file (the default),
    /// [`End::Quiet`] or [`End::More`] for a file still being written.
    pub fn set_end(&mut self, at_end: End) {
        self.at_end = at_end;
    }

    /// Offset in the source just past the last entry (or skipped bytes) handed out: a position to
    /// resume from.
    pub fn offset(&self) -> u64 {
        self.boundary
    }

    /// Offset in the source of the next byte to read.
    pub fn read_position(&self) -> u64 {
        self.consumed + self.buffered() as u64
    }

    pub fn parser(&self) -> &Parser {
        &self.parser
    }

    /// Bytes read but not yet framed.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    pub fn get_ref(&self) -> &R {
        &self.src
    }

    pub fn into_inner(self) -> R {
        self.src
    }

    /// The next entry and the offset just past it; None when the source has no complete entry left
    /// (at a finished file's end, or until a growing file grows).
    pub fn next_entry(&mut self) -> io::Result<Option<(LogEntry<'_>, u64)>> {
        let mut entry = LogEntry::default();
        Ok(self.next_entry_into(&mut entry)?.map(|at| (entry, at)))
    }

    /// [`EntryReader::next_entry`] into `entry`, which must be [`LogEntry::default`]: bulk
    /// parsing (`parse-log`) fills each entry where it keeps it instead of moving it out. Returns
    /// the offset just past the entry.
    #[inline]
    pub fn next_entry_into<'s>(&'s mut self, entry: &mut LogEntry<'s>) -> io::Result<Option<u64>> {
        loop {
            let end = if self.src_done {
                self.at_end
            } else {
                End::More
            };
            match self.parser.frame(&self.buf[self.start..self.end], end) {
                Frame::Entry(n) => {
                    let s = self.start;
                    self.start += n;
                    self.consumed += n as u64;
                    self.boundary = self.consumed;
                    self.parser.build_into(&self.buf[s..s + n], entry);
                    self.stats.count_entry(entry);
                    return Ok(Some(self.boundary));
                }
                Frame::Skip(n) => {
                    self.start += n;
                    self.consumed += n as u64;
                    self.boundary = self.consumed;
                    self.stats.count_skipped(n);
                }
                Frame::Absorb(n) => {
                    self.start += n;
                    self.consumed += n as u64;
                }
                Frame::NeedMore => {
                    if self.src_done {
                        // Read again on the next call: a growing file may have grown.
                        self.src_done = false;
                        return Ok(None);
                    }
                    self.fill()?;
                }
            }
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // A long entry grew the buffer; give the memory back once it is no longer needed, so a
        // reader that lives as long as the daemon keeps one chunk, not its largest entry.
        if self.buf.len() > 4 * self.chunk && self.end + self.chunk <= self.buf.len() / 2 {
            self.buf.truncate(self.end + self.chunk);
            self.buf.shrink_to_fit();
        }
        if self.buf.len() < self.end + self.chunk {
            self.buf.resize(self.end + self.chunk, 0);
        }
        loop {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.src_done = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EntryReader;
    use crate::log_format::LogFormat;
    use crate::logs::parse::Parser;

    #[test]
    fn a_jsonlog_line_over_the_cap_keeps_its_fields_with_long_strings_cut() {
        let big = "x".repeat(3 << 20);
        let mut log = format!(
            "{{\"timestamp\":\"2026-11-27 03:05:14.907 UTC\",\"pid\":9,\"error_severity\":\"LOG\",\"message\":\"duration: 1.0 ms\",\"statement\":\"select '{big}'\",\"application_name\":\"app\",\"query_id\":5}}\n"
        );
        log.push_str("{\"pid\":10,\"error_severity\":\"LOG\",\"message\":\"next\"}\n");
        let parser = Parser::new(LogFormat::Jsonlog, "", 1 << 20);
        let mut reader = EntryReader::new(std::io::Cursor::new(log.clone()), parser, 0);
        let (e, offset) = reader.next_entry().unwrap().unwrap();
        assert_eq!(e.pid, Some(9));
        assert_eq!(e.application_name.as_deref(), Some("app"));
        assert_eq!(e.query_id, Some(5));
        assert!(e.truncated);
        assert!(e.statement.as_deref().unwrap().len() <= 1 << 20);
        assert_eq!(offset as usize, log.find("\n{\"pid\":10").unwrap() + 1);
        drop(e);
        let (e, offset) = reader.next_entry().unwrap().unwrap();
        assert_eq!(e.message, "next");
        assert!(!e.truncated);
        assert_eq!(offset as usize, log.len());
    }
}
