//! Durable state files under `agent.state_dir` (the statement baseline, the log position, the
//! Python-buffer import marker, the last-cycle record): one atomic write and one set-aside of a
//! damaged file, so every state file has the same guarantee.
//!
//! [`write_atomic`] writes `<name>.tmp` in the same directory, fsyncs it, renames it over the file
//! and fsyncs the directory: after a crash or power loss the file holds either the old or the new
//! content, never part of one, and once it returns the new content is on disk. [`set_aside`] moves
//! a damaged file to `<name>.corrupt-<unix milliseconds>` through [`super::aside`], keeping only the
//! newest few copies.
//!
//! It does not know any file's format, decide that a file is damaged, log, or count: the owners of
//! the files do, and each set-aside is counted by its caller as `state_files_set_aside`
//! ([`crate::telemetry::registry::Event::StateFilesSetAside`]).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::aside;

/// The temporary file [`write_atomic`] writes before the rename: `<name>.tmp` beside `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// The directory holding `path` (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Replaces `path` with what `write` writes, atomically and durably (see the module
/// documentation); creates the directory if needed. `write` gets a buffered writer, so large
/// content can be serialized straight into it without a copy in memory. On failure the temporary
/// file is removed and `path` is left as it was.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let dir = dir_of(path);
    std::fs::create_dir_all(dir)?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut out = BufWriter::with_capacity(64 * 1024, File::create(&tmp)?);
        write(&mut out)?;
        out.flush()?;
        out.get_ref().sync_all()?;
        drop(out);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir).and_then(|d| d.sync_all())
}

/// [`write_atomic`] of bytes already in memory.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, |out| out.write_all(bytes))
}

/// A damaged state file that could not be moved aside.
#[derive(Debug, thiserror::Error)]
#[error("cannot move {} aside to {}: {source}", path.display(), to.display())]
pub struct SetAsideError {
    pub path: PathBuf,
    /// The name it was to get.
    pub to: PathBuf,
    pub source: io::Error,
}

/// Moves a damaged state file to `<name>.corrupt-<unix milliseconds>` so a fresh one can take its
/// place, deleting all but the newest [`aside::KEEP_CORRUPT_COPIES`] earlier copies. Returns the
/// new name. The caller logs it and counts `state_files_set_aside`.
pub fn set_aside(path: &Path) -> Result<PathBuf, SetAsideError> {
    let to = aside::target(path);
    aside::move_aside_to(path, &to).map_err(|source| SetAsideError {
        path: path.to_path_buf(),
        to,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("x.json");
        write_bytes(&path, b"old").unwrap();
        write_bytes(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(names(&dir.path().join("sub")), vec!["x.json"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_content_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_bytes(&path, b"old").unwrap();
        let err = write_atomic(&path, |out| {
            out.write_all(b"half of the new")?;
            Err(io::Error::other("serializer failed"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "serializer failed");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!temp_path(&path).exists());
        assert_eq!(names(dir.path()), vec!["x.json"]);
    }

    #[test]
    fn a_stale_temp_file_from_a_crash_is_overwritten_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_bytes(&path, b"old").unwrap();
        std::fs::write(temp_path(&path), b"torn").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        write_bytes(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn set_aside_keeps_only_the_newest_copies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        let mut moved = Vec::new();
        for i in 0..5 {
            std::fs::write(&path, format!("damaged {i}")).unwrap();
            moved.push(set_aside(&path).unwrap());
            assert!(!path.exists());
        }
        let left = names(dir.path());
        assert_eq!(left.len(), aside::KEEP_CORRUPT_COPIES, "{left:?}");
        for (i, m) in moved
            .iter()
            .enumerate()
            .skip(5 - aside::KEEP_CORRUPT_COPIES)
        {
            assert_eq!(std::fs::read_to_string(m).unwrap(), format!("damaged {i}"));
        }
        assert!(left.iter().all(|n| n.starts_with("x.json.corrupt-")));
    }
}
