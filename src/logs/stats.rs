//! Counts of the log pipeline, kept by each reader (not process-wide): nothing the parser meets is
//! dropped without one of these moving. The daemon's log task adds a tailer's counts to the
//! telemetry registry after every batch; `parse-log` prints a run's counts on stderr.

use super::entry::LogEntry;

/// What a reader (or a tailer over several files) has met so far.
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
    /// What the privacy step of [`super::finish_entry`] masked and redacted (the log task adds it to
    /// the registry's `privacy_*` counters; not part of `parse-log`'s summary).
    #[serde(skip)]
    pub privacy: crate::privacy::PrivacyCounts,
}

impl LogStats {
    pub(crate) fn count_entry(&mut self, e: &LogEntry<'_>) {
        self.entries += 1;
        if e.error_severity.is_none() {
            self.unparsed += 1;
        } else if e.timestamp.is_none() {
            self.no_timestamp += 1;
        }
        if e.truncated {
            self.truncated += 1;
        }
    }

    pub(crate) fn count_skipped(&mut self, n: usize) {
        self.skipped_bytes += n as u64;
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: LogStats) {
        self.entries += other.entries;
        self.unparsed += other.unparsed;
        self.truncated += other.truncated;
        self.skipped_bytes += other.skipped_bytes;
        self.no_timestamp += other.no_timestamp;
        self.files_truncated += other.files_truncated;
        self.privacy += other.privacy;
    }
}
