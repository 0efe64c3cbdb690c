//! Following the server log: reads new entries as they are written, across rotation (by time, size
//! or `pg_rotate_logfile()`), truncation and deletion, and hands them out in bounded batches whose
//! position is persisted only when the caller commits it (see the contract in `logs`).
//!
//! The followed file is polled (`logs.poll_interval_ms`, backing off while it is quiet: see
//! [`QUIET_POLL_MAX`]): a stat and a read per poll. inotify is not
//! used: it misses changes on NFS and some bind mounts, and rotation still needs a directory check,
//! so a poll over (inode, size) is both simpler and sufficient. When the current file stops growing
//! and a newer one exists, the current one is read to its end before moving on (the logging
//! collector opens the new file before it stops writing the old one). A stderr entry at the very
//! end of a file is emitted once the file has been quiet for one poll (its continuation lines are
//! written in the same write as its first line).
//!
//! Files read before are remembered with how far they were read ([`super::marks`]): a name the
//! server appends to again is continued where reading stopped, a rewritten one is read from its
//! start. A read error keeps the entries already read: the file is closed, the entries go out with
//! the next batch (which carries the error), and reading resumes just after them.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

mod files;

use files::{entry_position, position_in};

use super::marks::{FileMark, Marks};
use super::parse::End;
use super::position::{Position, PositionError, PositionStore, SetAside, FINGERPRINT_BYTES};
use super::reader::EntryReader;
pub use super::settings::TailSettings;
use super::source::{fingerprint_open, LogFile};
use super::stats::LogStats;
use super::{correlated_statement, finish_entry};
use crate::batch::correlated::Correlated;

/// Bytes read per refill while tailing: the server writes its log in small appends, and this
/// buffer lives as long as the daemon (parse-log reads in larger chunks).
const TAIL_CHUNK_BYTES: usize = 64 * 1024;

/// Room left in `max_batch_bytes` for the batch envelope around the entries (ids, agent, server,
/// `log_position` with its path).
pub const ENVELOPE_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Position(#[from] PositionError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TailError + '_ {
    move |source| TailError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Entries ready for a `pg_logs` batch and the position to commit once they are in the outbox.
#[derive(Debug, Default)]
pub struct LogBatch {
    /// Finished entries (see [`super::finish_entry`]) as JSON values for `Batch::data`.
    pub entries: Vec<Value>,
    /// The correlated statement of each entry of `entries` (same order, `None` for most), taken
    /// while the entry was typed ([`super::correlated_statement`]), for `Batch::correlated`.
    pub correlated: Vec<Option<Correlated>>,
    /// None when no file has been opened yet.
    pub position: Option<Position>,
    /// Reading stopped on this error after `entries` were read: they are still to be stored, and
    /// the next read resumes just after them.
    pub read_error: Option<TailError>,
}

/// An entry read but not yet handed out.
struct Pending {
    value: Value,
    correlated: Option<Correlated>,
    /// Its serialized JSON length plus a separator.
    bytes: usize,
    /// Where reading resumes after it (a batch that ends with it commits this), without the
    /// marks, which are in `read` (shared by the entries of one file).
    position: Position,
    read: Arc<Vec<FileMark>>,
}

struct Current {
    file: LogFile,
    reader: EntryReader<File>,
    /// Size at the previous poll, to tell a quiet file from a growing one.
    last_size: u64,
    fingerprint: (u64, u32),
    /// The marks of the other files while this one is read (they change only between files).
    read: Arc<Vec<FileMark>>,
}

/// Follows the server log. See the module documentation of `logs` for the commit contract.
pub struct Tailer {
    settings: TailSettings,
    store: PositionStore,
    committed: Option<Position>,
    current: Option<Current>,
    /// What readers of files no longer open met, and files found truncated (see
    /// [`Tailer::take_stats`]).
    stats: LogStats,
    /// The other files read recently and how far, so a file is never read twice and a reused name
    /// is continued where it was left.
    read: Marks,
    /// Where reading continues while no file is open, when that is ahead of `committed`: just
    /// after the entries read before a read error closed the file.
    resume: Option<Position>,
    /// `system_identifier` of the server whose log this is, stamped on positions.
    server: Option<String>,
    /// Entries read but not yet handed out (kept here so a dropped `next_batch` loses nothing).
    pending: Vec<Pending>,
    /// The sum of `pending`'s `bytes`.
    pending_bytes: usize,
    /// The saved position was damaged and moved aside when the tailer was opened.
    set_aside: Option<SetAside>,
    /// When a listing of the log directory last found no newer file (see [`QUIET_LISTING`]).
    listed_quiet: Option<Instant>,
    /// The wait before the next poll: `poll_interval`, doubled after each poll that found
    /// nothing new (see [`QUIET_POLL_MAX`]).
    quiet_wait: Duration,
}

/// While the log is quiet the poll backs off, doubling up to ten times `logs.poll_interval_ms` and
/// at most this (a quiet server's log was polled ten times a second: each poll a timer wake-up, a
/// stat and a read, about 5 % of the agent's CPU in the side-by-side profile). The first poll that
/// finds new data goes back to `poll_interval`; a line written to a quiet log is read at most this
/// much later.
const QUIET_POLL_MAX: Duration = Duration::from_secs(1);

/// While the current file is quiet and the last listing found no newer file, the directory is
/// listed again at most this often rather than at every poll: listing and stat-ing the directory
/// ten times a second was a tenth of the agent's CPU in the side-by-side profile (docs/cost.md).
/// A rotation is noticed at most this much later; a backlog of rotated files is read without
/// waiting (a listing that finds a newer file does not count).
const QUIET_LISTING: Duration = Duration::from_secs(1);

impl Tailer {
    /// Loads the saved position; files are opened on the first read. A damaged position file is
    /// moved aside and the tailer starts as without one ([`Tailer::set_aside`] says so): the caller
    /// reconciles with the outbox, else `start_at_end` applies.
    pub fn open(settings: TailSettings) -> Result<Tailer, TailError> {
        let store = PositionStore::new(&settings.state_dir);
        let loaded = store.load_or_set_aside()?;
        let read = Marks::new(
            loaded
                .position
                .as_ref()
                .map_or(Vec::new(), |p| p.read.clone()),
        );
        Ok(Tailer {
            settings,
            store,
            server: loaded.position.as_ref().and_then(|p| p.server.clone()),
            committed: loaded.position,
            current: None,
            stats: LogStats::default(),
            read,
            resume: None,
            pending: Vec::new(),
            pending_bytes: 0,
            set_aside: loaded.set_aside,
            listed_quiet: None,
            quiet_wait: Duration::ZERO,
        })
    }

    /// The damaged position file moved aside when the tailer was opened, if any.
    pub fn set_aside(&self) -> Option<&SetAside> {
        self.set_aside.as_ref()
    }

    /// The server whose log is read (its `system_identifier`). A committed position taken on
    /// another server is dropped (returned), so its offsets are never applied to this server's
    /// files: reading then starts as without one (`start_at`). A position without a server (an
    /// older format, or one taken while the server was unknown) is kept.
    pub fn set_server(&mut self, system_identifier: &str) -> Option<Position> {
        self.server = Some(system_identifier.to_string());
        let other = self
            .committed
            .as_ref()
            .is_some_and(|c| c.server.as_deref().is_some_and(|s| s != system_identifier));
        if !other {
            return None;
        }
        self.close_current();
        self.clear_pending();
        self.resume = None;
        self.read = Marks::default();
        self.committed.take()
    }

    /// True when `position` was taken on another server than the one set by
    /// [`Tailer::set_server`].
    pub fn other_server(&self, position: &Position) -> bool {
        matches!((&self.server, &position.server), (Some(a), Some(b)) if a != b)
    }

    /// The last committed position.
    pub fn committed(&self) -> Option<&Position> {
        self.committed.as_ref()
    }

    /// Persists `position` (fsync'd) as the point reading resumes from after a restart. Call it
    /// only once the entries up to it are durably stored elsewhere (the outbox).
    pub fn commit(&mut self, position: &Position) -> Result<(), TailError> {
        self.store.save(position)?;
        self.committed = Some(position.clone());
        Ok(())
    }

    /// Takes `position` as committed without saving it: the daemon's log task saves it itself, off
    /// the scheduler, with a [`crate::logs::position::PositionStore`] on the same state directory.
    pub fn mark_committed(&mut self, position: &Position) {
        self.committed = Some(position.clone());
    }

    /// At startup: `enqueued` is the position stored with the newest `pg_logs` batch still in the
    /// outbox. A crash between enqueue and commit left the saved position behind it; this moves it
    /// forward so those entries are not read twice.
    pub fn reconcile(&mut self, enqueued: &Position) -> Result<(), TailError> {
        if self.other_server(enqueued) {
            return Ok(());
        }
        let ahead = match &self.committed {
            None => true,
            Some(c) if c.id() == enqueued.id() => enqueued.offset > c.offset,
            Some(c) => enqueued.modified_ns >= c.modified_ns,
        };
        if ahead {
            // Positions stored with batches carry no marks (see the daemon's log task): keep the
            // committed ones, at most one batch older.
            let mut enqueued = enqueued.clone();
            if enqueued.read.is_empty() {
                enqueued.read = self
                    .committed
                    .as_ref()
                    .map_or(Vec::new(), |c| c.read.clone());
            }
            self.commit(&enqueued)?;
            self.rewind();
        }
        Ok(())
    }

    /// Forgets what was read since the last commit (for example after the outbox refused a batch):
    /// the next read starts again at the committed position.
    pub fn rewind(&mut self) {
        self.close_current();
        self.clear_pending();
        self.resume = None;
        self.read = Marks::new(
            self.committed
                .as_ref()
                .map_or(Vec::new(), |p| p.read.clone()),
        );
    }

    fn clear_pending(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// The entries' share of `max_batch_bytes`.
    fn byte_budget(&self) -> usize {
        self.settings.max_batch_bytes.saturating_sub(ENVELOPE_BYTES)
    }

    /// A batch's worth is read: `max` entries, or entries filling the byte budget.
    fn full(&self, max: usize) -> bool {
        self.pending.len() >= max || self.pending_bytes >= self.byte_budget()
    }

    /// Entries readable now, at most `max` and at most `max_batch_bytes` of serialized JSON with
    /// the envelope (a single entry larger than that goes out alone), without waiting; and the
    /// position after them.
    pub fn take_batch(&mut self, max: usize) -> Result<LogBatch, TailError> {
        // A direct read looks for a newer file whenever the current one is quiet: only the polls
        // of `next_batch` space the listings out (QUIET_LISTING).
        self.listed_quiet = None;
        let read_error = self.fill_or_hold(max)?;
        Ok(self.cut_batch(max, read_error))
    }

    /// Reads like [`Tailer::fill`]; on an error, entries already read are kept for the batch that
    /// carries it (Ok with the error), and only with none is the error returned.
    fn fill_or_hold(&mut self, max: usize) -> Result<Option<TailError>, TailError> {
        match self.fill(max) {
            Ok(()) => Ok(None),
            Err(e) if self.pending.is_empty() => Err(e),
            Err(e) => Ok(Some(e)),
        }
    }

    fn cut_batch(&mut self, max: usize, read_error: Option<TailError>) -> LogBatch {
        let budget = self.byte_budget();
        let (mut n, mut bytes) = (0, 0);
        for p in &self.pending {
            if n >= max || (n > 0 && bytes + p.bytes > budget) {
                break;
            }
            n += 1;
            bytes += p.bytes;
        }
        // All of them: the current position, which may be past lines that made no entry; else
        // the position after the last entry taken, the rest waiting for the next batch.
        let position = match n.checked_sub(1) {
            Some(last) if n < self.pending.len() => {
                let p = &self.pending[last];
                Some(Position {
                    read: p.read.to_vec(),
                    server: self.server.clone(),
                    ..p.position.clone()
                })
            }
            _ => self.position(),
        };
        self.pending_bytes -= bytes;
        let (entries, correlated) = self
            .pending
            .drain(..n)
            .map(|p| (p.value, p.correlated))
            .unzip();
        LogBatch {
            entries,
            correlated,
            position,
            read_error,
        }
    }

    /// Waits until `max` entries are read (an early batch) or `deadline` passes, polling every
    /// `poll_interval`; returns what was read. Cancel-safe: entries read before the future is
    /// dropped stay in the tailer for the next call.
    pub async fn next_batch(
        &mut self,
        max: usize,
        deadline: tokio::time::Instant,
    ) -> Result<LogBatch, TailError> {
        loop {
            let before = self.progress();
            let read_error = self.fill_or_hold(max)?;
            let now = tokio::time::Instant::now();
            if read_error.is_some() || self.full(max) || now >= deadline {
                return Ok(self.cut_batch(max, read_error));
            }
            let poll = self.settings.poll_interval;
            self.quiet_wait = if self.progress() == before {
                // Nothing new: wait twice as long next time, up to QUIET_POLL_MAX.
                (self.quiet_wait * 2).clamp(poll, (poll * 10).min(QUIET_POLL_MAX).max(poll))
            } else {
                poll
            };
            tokio::time::sleep(self.quiet_wait.min(deadline - now)).await;
        }
    }

    /// What a poll that found something changes: the bytes read and not handed out, and the
    /// current file's size.
    fn progress(&self) -> (usize, Option<u64>) {
        (
            self.pending_bytes,
            self.current.as_ref().map(|c| c.last_size),
        )
    }

    fn position(&self) -> Option<Position> {
        match &self.current {
            Some(cur) => Some(position_in(cur, &self.server)),
            None => self.resume.clone().or_else(|| self.committed.clone()),
        }
    }

    /// Reads entries into `pending` until a batch's worth is read (see [`Tailer::full`]) or nothing
    /// more is readable now. On an error the file being read is closed: what was read stays in
    /// `pending`, and the next read resumes just after it.
    fn fill(&mut self, max: usize) -> Result<(), TailError> {
        let r = self.fill_files(max);
        if r.is_err() {
            self.close_current();
        }
        r
    }

    fn fill_files(&mut self, max: usize) -> Result<(), TailError> {
        if self.current.is_none() && !self.open_first()? {
            return Ok(());
        }
        // Each pass either reads entries, switches file, or stops; switching is bounded by the
        // number of files in the directory.
        for _ in 0..10_000 {
            self.read_available(max)?;
            if self.full(max) {
                return Ok(());
            }
            let Some(cur) = self.current.as_mut() else {
                return Ok(());
            };
            let path = cur.file.path.clone();
            let meta = cur.reader.get_ref().metadata().map_err(io_err(&path))?;
            let read_to = cur.reader.read_position();
            if meta.len() < read_to {
                // Truncated in place (copytruncate, or log_truncate_on_rotation reusing the name).
                self.stats.files_truncated += 1;
                self.reopen_current_at(0)?;
                continue;
            }
            cur.file.modified = meta.modified().unwrap_or(cur.file.modified);
            let quiet = meta.len() == cur.last_size;
            if quiet && cur.reader.buffered() > 0 {
                // Quiet for a poll: a complete stderr entry at the end is final.
                cur.reader.set_end(End::Quiet);
                self.read_available(max)?;
                if let Some(cur) = self.current.as_mut() {
                    cur.reader.set_end(End::More);
                }
                if self.full(max) {
                    return Ok(());
                }
            }
            if let Some(cur) = self.current.as_mut() {
                cur.last_size = meta.len();
            }
            // Rotation shows as the current file going quiet; only then list the directory.
            if !quiet
                || self
                    .listed_quiet
                    .is_some_and(|t| t.elapsed() < QUIET_LISTING)
            {
                return Ok(());
            }
            let Some((next, offset, rewritten)) = self.next_file()? else {
                self.listed_quiet = Some(Instant::now());
                return Ok(());
            };
            self.listed_quiet = None;
            // A newer file exists: the current one is complete. Drain it, then move on.
            if let Some(cur) = self.current.as_mut() {
                cur.reader.set_end(End::Eof);
            }
            self.read_available(max)?;
            if self.full(max) {
                if let Some(cur) = self.current.as_mut() {
                    cur.reader.set_end(End::More);
                }
                return Ok(());
            }
            if let Some(cur) = self.close_current() {
                self.read.record(FileMark {
                    dev: cur.file.id.dev,
                    ino: cur.file.id.ino,
                    fingerprint: cur.fingerprint.0,
                    fingerprint_len: cur.fingerprint.1,
                    offset: cur.reader.offset(),
                });
            }
            if rewritten {
                self.stats.files_truncated += 1;
            }
            self.open_file(next, offset)?;
        }
        Ok(())
    }

    fn read_available(&mut self, max: usize) -> Result<(), TailError> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        let budget = self.settings.max_batch_bytes.saturating_sub(ENVELOPE_BYTES);
        while self.pending.len() < max && self.pending_bytes < budget {
            let next = cur.reader.next_entry().map_err(io_err(&cur.file.path))?;
            let Some((mut entry, _)) = next else { break };
            self.stats.privacy += finish_entry(&mut entry, &self.settings.finisher);
            match serde_json::to_value(&entry) {
                Ok(value) => {
                    let bytes = json_len(&value) + 1;
                    self.pending_bytes += bytes;
                    self.pending.push(Pending {
                        value,
                        correlated: correlated_statement(&entry),
                        bytes,
                        position: entry_position(cur),
                        read: cur.read.clone(),
                    });
                }
                Err(e) => {
                    return Err(TailError::Io {
                        path: cur.file.path.clone(),
                        source: e.into(),
                    })
                }
            }
        }
        // Read past what the fingerprint covers: it covers more now. From the open file: its path
        // may hold another file already.
        if cur.fingerprint.1 < FINGERPRINT_BYTES as u32
            && cur.reader.read_position() > u64::from(cur.fingerprint.1)
        {
            cur.fingerprint = fingerprint_open(cur.reader.get_ref(), FINGERPRINT_BYTES)
                .unwrap_or(cur.fingerprint);
        }
        Ok(())
    }

    /// What the tailer has met since the last call: entries, unparsed lines, cut entries, files
    /// found truncated.
    pub fn take_stats(&mut self) -> LogStats {
        let mut s = std::mem::take(&mut self.stats);
        if let Some(cur) = self.current.as_mut() {
            s.add(cur.reader.take_stats());
        }
        s
    }
}

/// The length of `v` serialized as compact JSON (what `Record::new` stores), without building it.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a Value to a sink that cannot fail cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
