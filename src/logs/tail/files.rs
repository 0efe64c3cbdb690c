//! Which file the tailer reads: the one to start with (where reading stopped, the committed
//! position, else `start_at`), the next one once the current is finished (see
//! [`super::super::marks`]), and opening and closing them. Reading entries belongs to the parent.

use std::io::{Seek, SeekFrom};
use std::sync::Arc;

use super::{io_err, nanos, Current, TailError, Tailer, TAIL_CHUNK_BYTES};
use crate::logs::parse::{End, Parser};
use crate::logs::position::{Position, FINGERPRINT_BYTES, POSITION_VERSION};
use crate::logs::reader::EntryReader;
use crate::logs::source::fingerprint_open;
use crate::logs::source::{LogFile, LogSource};

impl Tailer {
    /// Opens the file to start with: where reading stopped (after a read error) or the committed
    /// one, else per `start_at_end`. False when there is no file yet.
    pub(super) fn open_first(&mut self) -> Result<bool, TailError> {
        let files = self.list()?;
        if let Some(pos) = self.resume.clone().or_else(|| self.committed.clone()) {
            if let Some(f) = files
                .iter()
                .find(|f| f.id == pos.id() && pos.matches(&f.path))
            {
                let offset = if f.size < pos.offset {
                    self.stats.files_truncated += 1;
                    0
                } else {
                    pos.offset
                };
                self.open_file(f.clone(), offset)?;
                return Ok(true);
            }
            // The committed file is gone (or its inode was reused by a new file, whose fingerprint
            // differs): continue with the files written after it, or read before and grown since.
            self.read.retain_listed(&files);
            // One path: the file there now was written after it, whatever its timestamp says.
            let one_path = matches!(self.settings.source, LogSource::File(_));
            let next = self.read.pick(&files, None, |f| {
                one_path || nanos(f.modified) > pos.modified_ns
            });
            return match next {
                Some((f, offset, rewritten)) => {
                    if rewritten {
                        self.stats.files_truncated += 1;
                    }
                    self.open_file(f, offset)?;
                    Ok(true)
                }
                None => Ok(false),
            };
        }
        let pick = if self.settings.start_at_end {
            files.last().cloned().map(|f| {
                let size = f.size;
                (f, size)
            })
        } else {
            files.first().cloned().map(|f| (f, 0))
        };
        match pick {
            Some((f, offset)) => {
                self.open_file(f, offset)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub(super) fn list(&self) -> Result<Vec<LogFile>, TailError> {
        match self.settings.source.files() {
            Ok(f) => Ok(f),
            Err(source) => Err(TailError::Io {
                path: match &self.settings.source {
                    LogSource::File(p) => p.clone(),
                    LogSource::Dir { dir, .. } => dir.clone(),
                },
                source,
            }),
        }
    }

    /// The file to read after the current one, if it is finished, with the offset to start at and
    /// whether a known name or inode now holds another file (see
    /// [`crate::logs::marks::Marks::pick`]).
    pub(super) fn next_file(&mut self) -> Result<Option<(LogFile, u64, bool)>, TailError> {
        let files = self.list()?;
        self.read.retain_listed(&files);
        let Some(cur) = &self.current else {
            return Ok(None);
        };
        let key = (cur.file.modified, cur.file.path.as_path());
        let one_path = matches!(self.settings.source, LogSource::File(_));
        // One path: a different file there means it was replaced.
        Ok(self.read.pick(&files, Some(cur.file.id), |f| {
            one_path || f.order_key() > key
        }))
    }

    /// Closes the file being read, keeping what its reader counted and where reading stopped.
    pub(super) fn close_current(&mut self) -> Option<Current> {
        let mut cur = self.current.take()?;
        self.stats.add(cur.reader.take_stats());
        self.resume = Some(position_in(&cur, &self.server));
        Some(cur)
    }

    pub(super) fn reopen_current_at(&mut self, offset: u64) -> Result<(), TailError> {
        if let Some(cur) = self.close_current() {
            self.open_file(cur.file, offset)?;
        }
        Ok(())
    }

    pub(super) fn open_file(&mut self, file: LogFile, offset: u64) -> Result<(), TailError> {
        let mut f = crate::logs::source::open_regular(&file.path).map_err(io_err(&file.path))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(io_err(&file.path))?;
        let fp = fingerprint_open(&f, FINGERPRINT_BYTES).unwrap_or((0, 0));
        let parser = Parser::new(
            self.settings.format,
            &self.settings.prefix,
            self.settings.max_entry_bytes,
        );
        let mut reader = EntryReader::new(f, parser, offset).with_chunk(TAIL_CHUNK_BYTES);
        reader.set_end(End::More);
        self.read.forget(file.id);
        self.current = Some(Current {
            last_size: file.size,
            file,
            reader,
            fingerprint: fp,
            read: Arc::new(self.read.to_vec()),
        });
        Ok(())
    }
}

/// Where reading resumes in `cur`: just past the last entry (or skipped bytes) handed out.
pub(super) fn position_in(cur: &Current, server: &Option<String>) -> Position {
    Position {
        read: cur.read.to_vec(),
        server: server.clone(),
        ..entry_position(cur)
    }
}

/// [`position_in`] without the marks and the server (kept once per file, not per waiting entry).
pub(super) fn entry_position(cur: &Current) -> Position {
    Position {
        version: POSITION_VERSION,
        path: cur.file.path.clone(),
        dev: cur.file.id.dev,
        ino: cur.file.id.ino,
        offset: cur.reader.offset(),
        fingerprint: cur.fingerprint.0,
        fingerprint_len: cur.fingerprint.1,
        modified_ns: nanos(cur.file.modified),
        read: Vec::new(),
        server: None,
    }
}
