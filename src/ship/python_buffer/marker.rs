//! The import marker, `<state_dir>/python-buffer-import.json`: which Python buffer file was imported
//! and up to which item. Saved atomically ([`crate::state::file::write_atomic`]: temp file, fsync,
//! rename, fsync of the directory), so it is always either the previous or the new version.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PythonBufferError;

/// The marker's file name under `agent.state_dir`.
pub const MARKER_FILE_NAME: &str = "python-buffer-import.json";

/// Which file on disk: a file replaced at the same path has another inode (or birth time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    /// Birth time in unix nanoseconds, where the filesystem records one.
    pub created_ns: Option<i64>,
}

impl FileIdentity {
    pub fn of(meta: &fs::Metadata) -> FileIdentity {
        let created_ns = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_nanos()).ok());
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            created_ns,
        }
    }
}

/// What the marker holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportMarker {
    /// The Python buffer's database file.
    pub db_path: PathBuf,
    #[serde(flatten)]
    pub file: FileIdentity,
    /// Every item with an `_id` up to this one was pushed or skipped; an import starts after it.
    pub last_id: i64,
    /// Items pushed from this file, over all runs.
    pub pushed: u64,
    /// Items skipped as undecodable or invalid, over all runs.
    pub skipped: u64,
    /// True once a run went through to the end of the table.
    pub complete: bool,
    /// When the marker was last saved, unix milliseconds.
    pub updated_ms: i64,
}

/// Reads the marker; `None` when there is none yet.
pub fn load(path: &Path) -> Result<Option<ImportMarker>, PythonBufferError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PythonBufferError::Marker {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| PythonBufferError::MarkerCorrupt {
            path: path.to_path_buf(),
            source,
        })
}

/// Saves durably: once this returns, the marker survives a crash or power loss.
pub fn save(path: &Path, marker: &ImportMarker) -> Result<(), PythonBufferError> {
    let err = |source| PythonBufferError::Marker {
        path: path.to_path_buf(),
        source,
    };
    let body = serde_json::to_vec_pretty(marker).map_err(|e| err(e.into()))?;
    crate::state::file::write_bytes(path, &body).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_marker_loads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(MARKER_FILE_NAME);
        assert_eq!(load(&path).unwrap(), None);
        let marker = ImportMarker {
            db_path: "/var/lib/bitville-postgres-agent/buffer/data.db".into(),
            file: FileIdentity {
                dev: 2049,
                ino: 77,
                created_ns: Some(1_764_300_000_123_456_789),
            },
            last_id: 42,
            pushed: 40,
            skipped: 1,
            complete: false,
            updated_ms: 5,
        };
        save(&path, &marker).unwrap();
        assert_eq!(load(&path).unwrap(), Some(marker));
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_garbled_marker_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MARKER_FILE_NAME);
        fs::write(&path, b"{\"last_id\": ").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains(MARKER_FILE_NAME), "{err}");
    }
}
