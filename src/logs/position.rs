//! The tailer's position: which file (device + inode, with a fingerprint of its first bytes so a
//! reused inode is noticed), the byte offset just past the last entry handed off, how far each other
//! recently read file was read (see [`super::marks`]), and the server whose log it is. Persisted as
//! `log_position.json` under `agent.state_dir` by write-to-temp, fsync, rename, fsync-directory
//! ([`crate::state::file`]), so a crash leaves either the old or the new position, never a torn one.
//!
//! A damaged file (bytes that are not a position, or a file that cannot be read) is moved aside to
//! `log_position.json.corrupt-<ms since the epoch>` by [`crate::state::file::set_aside`] (the newest
//! [`KEEP_SET_ASIDE`] are kept for inspection) and reading resumes as if there were none: the caller then reconciles with the
//! outbox, see [`PositionStore::load_or_set_aside`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::marks::FileMark;
use super::source::{fingerprint, FileId};

/// Damaged position files kept beside the state (older ones are deleted).
pub const KEEP_SET_ASIDE: usize = crate::state::aside::KEEP_CORRUPT_COPIES;

/// Bytes at the start of a file that identify it together with its inode.
pub const FINGERPRINT_BYTES: usize = 1024;

/// The format [`PositionStore::save`] writes. Version 1 (no `version` key) had no `read` and no
/// `server`; it is still read, as a position with neither.
pub const POSITION_VERSION: u32 = 2;

fn version_1() -> u32 {
    1
}

/// Where reading resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The format version (see [`POSITION_VERSION`]).
    #[serde(default = "version_1")]
    pub version: u32,
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
    /// The other files read recently and how far: a name the server reuses (appending to the file
    /// again) is continued from there, never read again from the start nor skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<FileMark>,
    /// `system_identifier` of the server whose log this is, when it was known: a position taken on
    /// another server is not applied to this one's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
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
    #[error("{}: the saved log position is damaged ({reason}) and cannot be moved aside to {}: {source}", path.display(), to.display())]
    SetAside {
        path: PathBuf,
        to: PathBuf,
        reason: String,
        source: io::Error,
    },
}

/// A damaged position file that was moved out of the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Where the damaged file is now.
    pub moved_to: PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

/// What [`PositionStore::load_or_set_aside`] found.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub position: Option<Position>,
    /// Set when the file was damaged and moved aside (`position` is then None).
    pub set_aside: Option<SetAside>,
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

    /// Loads the position; a damaged file is moved aside (see the module documentation) instead of
    /// failing, so one bad write or disk error cannot stop log shipping for good. Fails only when
    /// the damaged file cannot be moved.
    pub fn load_or_set_aside(&self) -> Result<Loaded, PositionError> {
        let reason = match self.load() {
            Ok(position) => {
                return Ok(Loaded {
                    position,
                    set_aside: None,
                })
            }
            Err(PositionError::Corrupt { source, .. }) => format!("not a log position: {source}"),
            Err(PositionError::Read { source, .. }) => format!("unreadable: {source}"),
            Err(e) => return Err(e),
        };
        let to =
            crate::state::file::set_aside(&self.path).map_err(|e| PositionError::SetAside {
                path: self.path.clone(),
                to: e.to,
                reason: reason.clone(),
                source: e.source,
            })?;
        Ok(Loaded {
            position: None,
            set_aside: Some(SetAside {
                moved_to: to,
                reason,
            }),
        })
    }

    /// Saves durably: the position survives a crash or power loss once this returns.
    pub fn save(&self, pos: &Position) -> Result<(), PositionError> {
        let err = |source| PositionError::Write {
            path: self.path.clone(),
            source,
        };
        let body = serde_json::to_vec(&Position {
            version: POSITION_VERSION,
            ..pos.clone()
        })
        .map_err(|e| err(e.into()))?;
        crate::state::file::write_bytes(&self.path, &body).map_err(err)
    }
}
