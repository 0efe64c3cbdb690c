//! `postgres-agent parse-log`: parses log files (or stdin) offline and prints one JSON entry per line.
//!
//! The format is detected per input from its first line unless given; for stderr without `--prefix`,
//! the `log_line_prefix` is inferred from the first 64 KiB ([`crate::logs::parse::infer`]) and the choice
//! is printed on stderr. A summary with the
//! counts of entries, unparsed lines and truncated entries goes to stderr, so nothing is dropped
//! without a trace.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::log_format::LogFormat;
use crate::logs::parse::{detect_format, infer_prefix_for, Parser, MAX_ENTRY_BYTES};
use crate::logs::reader::EntryReader;
use crate::logs::stats::LogStats;
use crate::logs::{finish_entry, Finisher, LogEntry};

#[derive(Debug, thiserror::Error)]
pub enum ParseLogError {
    #[error("unknown --format {0:?}: expected auto, stderr, csvlog, jsonlog or syslog")]
    Format(String),
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write the output: {0}")]
    Write(io::Error),
}

/// Options of one `parse-log` run.
#[derive(Debug, Clone)]
pub struct ParseLogOptions {
    /// `auto`, `stderr`, `csvlog` or `jsonlog`.
    pub format: String,
    pub prefix: Option<String>,
    /// Files to parse; stdin when empty.
    pub files: Vec<PathBuf>,
    pub finisher: Finisher,
}

/// Runs `parse-log`, writing entries to `out`. Returns the number of entries written.
/// Parses every input; returns what the readers met (entries, unparsed lines, cut entries).
pub fn run(opts: &ParseLogOptions, out: impl Write) -> Result<LogStats, ParseLogError> {
    let forced = match opts.format.as_str() {
        "auto" => None,
        f => Some(LogFormat::from_name(f).ok_or_else(|| ParseLogError::Format(f.to_string()))?),
    };
    let mut out = BufWriter::with_capacity(256 * 1024, out);
    let mut met = LogStats::default();
    if opts.files.is_empty() {
        let path = PathBuf::from("<stdin>");
        met.add(parse_one(
            io::stdin().lock(),
            &path,
            forced,
            opts,
            &mut out,
        )?);
    }
    for path in &opts.files {
        let file = File::open(path).map_err(|source| ParseLogError::Read {
            path: path.clone(),
            source,
        })?;
        met.add(parse_one(file, path, forced, opts, &mut out)?);
    }
    out.flush().map_err(ParseLogError::Write)?;
    Ok(met)
}

fn parse_one(
    mut src: impl Read,
    path: &Path,
    forced: Option<LogFormat>,
    opts: &ParseLogOptions,
    out: &mut impl Write,
) -> Result<LogStats, ParseLogError> {
    let read_err = |source| ParseLogError::Read {
        path: path.to_path_buf(),
        source,
    };
    // A sample for detection, put back in front of the rest of the input.
    let mut sample = Vec::with_capacity(64 * 1024);
    (&mut src)
        .take(64 * 1024)
        .read_to_end(&mut sample)
        .map_err(read_err)?;
    let format = forced.unwrap_or_else(|| detect_format(&sample));
    let prefix = match (&opts.prefix, format) {
        (Some(p), _) => p.clone(),
        (None, LogFormat::Stderr | LogFormat::Syslog) => {
            let inferred = infer_prefix_for(format, &sample);
            // Said on stderr, beside the summary: the entries go to stdout.
            eprintln!(
                "parse-log: {}: no --prefix given, inferred {inferred}",
                path.display()
            );
            inferred.prefix.to_string()
        }
        (None, _) => String::new(),
    };
    let parser = Parser::new(format, &prefix, MAX_ENTRY_BYTES);
    let mut reader = EntryReader::new(io::Cursor::new(sample).chain(src), parser, 0);
    // Entries are written straight into one output buffer, handed to the writer when it fills.
    const FLUSH_AT: usize = 256 * 1024;
    let mut buf = Vec::with_capacity(FLUSH_AT + 64 * 1024);
    loop {
        let mut entry = LogEntry::default();
        if reader
            .next_entry_into(&mut entry)
            .map_err(read_err)?
            .is_none()
        {
            break;
        }
        finish_entry(&mut entry, &opts.finisher);
        entry
            .write_json(&mut buf)
            .map_err(|e| ParseLogError::Write(e.into()))?;
        buf.push(b'\n');
        if buf.len() >= FLUSH_AT {
            out.write_all(&buf).map_err(ParseLogError::Write)?;
            buf.clear();
            if buf.capacity() > 4 * FLUSH_AT {
                buf = Vec::with_capacity(FLUSH_AT + 64 * 1024);
            }
        }
    }
    out.write_all(&buf).map_err(ParseLogError::Write)?;
    Ok(reader.take_stats())
}

/// The one-line summary printed on stderr after a run.
pub fn summary(met: &LogStats) -> String {
    format!(
        "parse-log: {} entries, {} unparsed lines, {} truncated entries ({} bytes dropped), {} without a readable timestamp",
        met.entries, met.unparsed, met.truncated, met.skipped_bytes, met.no_timestamp
    )
}
