//! The tailer's position: which file (device + inode, with a fingerprint of its first bytes so a
//! reused inode is noticed) and the byte offset just past the last entry handed off. Persisted as
//! `log_position.json` under `agent.state_dir` by write-to-temp, fsync, rename, fsync-directory, so
//! a crash leaves either the old or the new position, never a torn one.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes at the start of a file that identify it together with its inode.
pub const FINGERPRINT_BYTES: usize = 256;

/// Where reading resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The file's path when the position was taken (informational; identity is dev + inode).
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    /// Offset just past the last entry handed off.
    pub offset: u64,
    /// FNV-1a of the file's first `fingerprint_len` bytes.
    pub fingerprint: u64,
    pub fingerprint_len: u32,
    /// The file's modification time (ns since the epoch) when the position was taken: if the file
    /// is gone on restart, reading resumes with the files modified after it.
    pub modified_ns: u64,
}

/// The identity of an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

impl Position {
    pub fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            ino: self.ino,
        }
    }

    /// True when `path` still holds the file this position was taken in.
    pub fn matches(&self, path: &Path) -> bool {
        let Ok(meta) = fs::metadata(path) else {
            return false;
        };
        if FileId::of(&meta) != self.id() {
            return false;
        }
        matches!(fingerprint(path, self.fingerprint_len as usize), Ok((fp, n)) if fp == self.fingerprint && n == self.fingerprint_len)
    }
}

/// FNV-1a of the first `max` bytes of the file (fewer when it is shorter), and how many were read.
pub fn fingerprint(path: &Path, max: usize) -> io::Result<(u64, u32)> {
    let mut buf = vec![0u8; max];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < max {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &buf[..n] {
        h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok((h, n as u32))
}

#[derive(Debug, thiserror::Error)]
pub enum PositionError {
    #[error("{}: cannot read the saved log position: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: the saved log position is corrupt ({source}); delete it to start over", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: cannot save the log position: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// The position file under the state directory.
#[derive(Debug, Clone)]
pub struct PositionStore {
    path: PathBuf,
}

impl PositionStore {
    /// `<state_dir>/log_position.json`.
    pub fn new(state_dir: &Path) -> PositionStore {
        PositionStore {
            path: state_dir.join("log_position.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Result<Option<Position>, PositionError> {
        let text = match fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PositionError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| PositionError::Corrupt {
                path: self.path.clone(),
                source,
            })
    }

    /// Saves durably: the position survives a crash or power loss once this returns.
    pub fn save(&self, pos: &Position) -> Result<(), PositionError> {
        let err = |source| PositionError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(err)?;
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec(pos).map_err(|e| err(e.into()))?;
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &self.path).map_err(err)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }
}
