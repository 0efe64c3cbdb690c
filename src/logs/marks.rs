//! Which log files the tailer has already read, and how far: a file is known by its device, inode
//! and a fingerprint of its first bytes (with the number of bytes covered), plus the offset reading
//! stopped at. This is what lets the tailer follow a name the server reuses:
//!
//! - `log_filename` switched a -> b -> a, or `postgresql-%a.log` without
//!   `log_truncate_on_rotation`: the server appends to the file it wrote before (same inode, same
//!   first bytes, larger than the offset read): reading continues from that offset, neither skipped
//!   as finished nor read again from the start;
//! - `log_truncate_on_rotation` reusing a name, or an inode reused after a delete: the file is
//!   shorter than the offset read, or its first bytes differ: it is a new file, read from its start.
//!
//! The marks travel in the saved position ([`super::position::Position::read`]), so a restart
//! resumes the same way. This file owns the marks and the choice of the next file to read; opening
//! and reading belong to [`super::tail`].

use serde::{Deserialize, Serialize};

use super::source::{fingerprint, FileId, LogFile};

/// Files remembered besides the current one: more than a week of daily names (`%a`), an hour of
/// `%M` names. Each costs about 100 bytes in the saved position (not in batches: the log task
/// leaves them out of the `log_position` it stores with each batch).
pub const MAX_MARKS: usize = 64;

/// A file read before, and how far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMark {
    pub dev: u64,
    pub ino: u64,
    /// FNV-1a of the file's first `fingerprint_len` bytes when it was read.
    pub fingerprint: u64,
    pub fingerprint_len: u32,
    /// Offset just past the last entry read from it.
    pub offset: u64,
}

impl FileMark {
    pub fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            ino: self.ino,
        }
    }
}

/// What a listed file is to the tailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never read (or its mark belongs to an earlier file: rewritten, or a reused inode).
    New { rewritten: bool },
    /// Read up to this offset and grown since: continue there.
    Grown(u64),
    /// Read to its current end.
    Done,
}

/// The marks of the files read recently, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks(Vec<FileMark>);

impl Marks {
    pub fn new(marks: Vec<FileMark>) -> Marks {
        Marks(marks)
    }

    pub fn to_vec(&self) -> Vec<FileMark> {
        self.0.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Remembers that `mark`'s file was read up to its offset (replacing an older mark of it).
    pub fn record(&mut self, mark: FileMark) {
        self.0.retain(|m| m.id() != mark.id());
        self.0.push(mark);
        if self.0.len() > MAX_MARKS {
            self.0.remove(0);
        }
    }

    /// Forgets `id` (it is being read again: the current file's position says how far).
    pub fn forget(&mut self, id: FileId) {
        self.0.retain(|m| m.id() != id);
    }

    /// Forgets the files no longer listed (deleted, or renamed away from a followed path).
    pub fn retain_listed(&mut self, files: &[LogFile]) {
        self.0.retain(|m| files.iter().any(|f| f.id == m.id()));
    }

    /// What `file` is: compared with its mark by size, then (only when it grew) by fingerprint.
    pub fn seen(&self, file: &LogFile) -> Seen {
        let Some(mark) = self.0.iter().find(|m| m.id() == file.id) else {
            return Seen::New { rewritten: false };
        };
        if file.size < mark.offset {
            return Seen::New { rewritten: true };
        }
        if file.size == mark.offset {
            return Seen::Done;
        }
        match fingerprint(&file.path, mark.fingerprint_len as usize) {
            Ok((fp, n)) if fp == mark.fingerprint && n == mark.fingerprint_len => {
                Seen::Grown(mark.offset)
            }
            // Unreadable now: let the open report it.
            Err(_) => Seen::Grown(mark.offset),
            Ok(_) => Seen::New { rewritten: true },
        }
    }

    /// The next file to read among `files` (oldest first), other than `current`, and the offset to
    /// start at: the oldest that is either known and grown (continued where it was left), or new and
    /// `newer` (read from its start). The bool says that a known name or inode now holds another
    /// file.
    pub fn pick(
        &self,
        files: &[LogFile],
        current: Option<FileId>,
        newer: impl Fn(&LogFile) -> bool,
    ) -> Option<(LogFile, u64, bool)> {
        files
            .iter()
            .filter(|f| Some(f.id) != current)
            .find_map(|f| match self.seen(f) {
                Seen::Grown(at) => Some((f.clone(), at, false)),
                Seen::New { rewritten } if newer(f) => Some((f.clone(), 0, rewritten)),
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::logs::position::{Position, FINGERPRINT_BYTES};
    use crate::logs::source::LogSource;

    fn listed(path: &std::path::Path) -> LogFile {
        let files = LogSource::File(path.to_path_buf()).files().expect("list");
        files.into_iter().next().expect("the file")
    }

    fn mark_of(f: &LogFile) -> FileMark {
        let (fingerprint, fingerprint_len) =
            fingerprint(&f.path, FINGERPRINT_BYTES).expect("fingerprint");
        FileMark {
            dev: f.id.dev,
            ino: f.id.ino,
            fingerprint,
            fingerprint_len,
            offset: f.size,
        }
    }

    #[test]
    fn a_file_appended_to_again_is_grown_a_rewritten_one_is_new() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, "first line\n").expect("write");
        let mut marks = Marks::default();
        marks.record(mark_of(&listed(&path)));
        assert_eq!(marks.seen(&listed(&path)), Seen::Done);
        // Appended to (the server reopening the name in append mode).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(b"second line\n").expect("append");
        assert_eq!(marks.seen(&listed(&path)), Seen::Grown(11));
        let picked = marks.pick(&[listed(&path)], None, |_| false);
        assert_eq!(
            picked.map(|(_, at, rewritten)| (at, rewritten)),
            Some((11, false))
        );
        // Truncated and rewritten in place (log_truncate_on_rotation): shorter, then other bytes.
        std::fs::write(&path, "new\n").expect("truncate");
        assert_eq!(marks.seen(&listed(&path)), Seen::New { rewritten: true });
        std::fs::write(&path, "other first line, longer\n").expect("rewrite");
        assert_eq!(marks.seen(&listed(&path)), Seen::New { rewritten: true });
        // A new file is read only when it is newer than the current one.
        assert!(marks.pick(&[listed(&path)], None, |_| false).is_none());
    }

    #[test]
    fn marks_are_bounded_and_forgotten_when_the_file_is_gone() {
        let mut marks = Marks::default();
        for ino in 0..(MAX_MARKS as u64 + 10) {
            marks.record(FileMark {
                dev: 1,
                ino,
                fingerprint: 0,
                fingerprint_len: 0,
                offset: 1,
            });
        }
        assert_eq!(marks.to_vec().len(), MAX_MARKS);
        assert_eq!(marks.to_vec()[0].ino, 10, "the oldest are dropped");
        marks.retain_listed(&[]);
        assert!(marks.is_empty());
    }

    #[test]
    fn a_version_1_position_is_read_as_one_without_marks_or_server() {
        let v1 = r#"{"path":"/var/log/postgresql/x.log","dev":2049,"ino":77,"offset":4096,
            "fingerprint":123,"fingerprint_len":256,"modified_ns":1700000000000000000}"#;
        let p: Position = serde_json::from_str(v1).expect("version 1");
        assert_eq!((p.version, p.offset, p.fingerprint_len), (1, 4096, 256));
        assert!(p.read.is_empty() && p.server.is_none());
        let dir = tempfile::tempdir().expect("dir");
        let store = crate::logs::position::PositionStore::new(dir.path());
        store.save(&p).expect("save");
        let saved = std::fs::read_to_string(store.path()).expect("read");
        assert!(saved.contains("\"version\":2"), "{saved}");
        assert_eq!(store.load().expect("load").map(|p| p.offset), Some(4096));
    }
}
