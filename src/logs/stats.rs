//! Counters of the log pipeline, process-wide, for `/metrics` and `status`: nothing the parser meets
//! is dropped without one of these moving.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::entry::LogEntry;

static ENTRIES: AtomicU64 = AtomicU64::new(0);
static UNPARSED: AtomicU64 = AtomicU64::new(0);
static TRUNCATED: AtomicU64 = AtomicU64::new(0);
static SKIPPED_BYTES: AtomicU64 = AtomicU64::new(0);
static NO_TIMESTAMP: AtomicU64 = AtomicU64::new(0);
static FILES_TRUNCATED: AtomicU64 = AtomicU64::new(0);

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogStats {
    /// Entries parsed, of any kind.
    pub entries: u64,
    /// Lines that fit no format (kept as entries with `error_severity` null).
    pub unparsed: u64,
    /// Entries cut at the size cap.
    pub truncated: u64,
    /// Bytes of cut entries that were dropped.
    pub skipped_bytes: u64,
    /// Parsed entries whose timestamp could not be read (unknown zone abbreviation).
    pub no_timestamp: u64,
    /// Times a followed file shrank below the saved position (truncated or replaced in place).
    pub files_truncated: u64,
}

pub fn snapshot() -> LogStats {
    LogStats {
        entries: ENTRIES.load(Relaxed),
        unparsed: UNPARSED.load(Relaxed),
        truncated: TRUNCATED.load(Relaxed),
        skipped_bytes: SKIPPED_BYTES.load(Relaxed),
        no_timestamp: NO_TIMESTAMP.load(Relaxed),
        files_truncated: FILES_TRUNCATED.load(Relaxed),
    }
}

pub(crate) fn count_entry(e: &LogEntry<'_>) {
    ENTRIES.fetch_add(1, Relaxed);
    if e.error_severity.is_none() {
        UNPARSED.fetch_add(1, Relaxed);
    } else if e.timestamp.is_none() {
        NO_TIMESTAMP.fetch_add(1, Relaxed);
    }
    if e.truncated {
        TRUNCATED.fetch_add(1, Relaxed);
    }
}

pub(crate) fn count_skipped(n: usize) {
    SKIPPED_BYTES.fetch_add(n as u64, Relaxed);
}

pub(crate) fn count_file_truncated() {
    FILES_TRUNCATED.fetch_add(1, Relaxed);
}
