//! Setting a damaged state file aside: renamed to `<name>.corrupt-<unix milliseconds>` (with a
//! SQLite database's `-wal` and `-shm` companions) so a fresh one can take its place, keeping only
//! the newest few copies.
//!
//! It does not decide that a file is damaged or count the event; its callers (the outbox, the
//! statement baseline) do.

use std::io;
use std::path::{Path, PathBuf};

use crate::clock::now_ms;

/// Corrupt files moved aside that are kept for inspection; older ones are deleted so repeated
/// corruption cannot fill the disk.
pub const KEEP_CORRUPT_COPIES: usize = 2;

/// The `-wal` and `-shm` companions of a database file.
pub fn companions(path: &Path) -> [PathBuf; 2] {
    let with = |suffix: &str| {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [with("-wal"), with("-shm")]
}

/// Renames a damaged file (and, for a SQLite database, its WAL and shared-memory files) to
/// `<name>.corrupt-<unix milliseconds>` so a fresh one can be created, and deletes all but the newest
/// [`KEEP_CORRUPT_COPIES`] earlier copies. Returns the new name.
pub fn move_aside(path: &Path) -> io::Result<PathBuf> {
    move_aside_to(path, &target(path))
}

/// The name [`move_aside`] gives `path` now: `<name>.corrupt-<unix milliseconds>`, stamped later
/// than every copy already set aside so that the newest are the ones kept (and two set-asides in
/// the same millisecond do not overwrite each other).
pub fn target(path: &Path) -> PathBuf {
    let now = u128::try_from(now_ms()).unwrap_or(0);
    let stamp = corrupt_stamps(path)
        .last()
        .map_or(now, |newest| now.max(newest + 1));
    let mut target = path.as_os_str().to_owned();
    target.push(format!(".corrupt-{stamp}"));
    PathBuf::from(target)
}

/// [`move_aside`] to a name taken from [`target`].
pub fn move_aside_to(path: &Path, target: &Path) -> io::Result<PathBuf> {
    let target = target.to_path_buf();
    if path.exists() {
        std::fs::rename(path, &target)?;
    }
    for (companion, suffix) in companions(path).iter().zip(["-wal", "-shm"]) {
        if companion.exists() {
            let mut t = target.as_os_str().to_owned();
            t.push(suffix);
            std::fs::rename(companion, PathBuf::from(t))?;
        }
    }
    prune_corrupt_copies(path);
    Ok(target)
}

fn prune_corrupt_copies(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!("{}.corrupt-", name.to_string_lossy());
    let stamps = corrupt_stamps(path);
    let excess = stamps.len().saturating_sub(KEEP_CORRUPT_COPIES);
    for stamp in &stamps[..excess] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("{prefix}{stamp}{suffix}")));
        }
    }
}

/// The stamps of the copies of `path` set aside so far, oldest first.
fn corrupt_stamps(path: &Path) -> Vec<u128> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.corrupt-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    // Copies are grouped by their stamp (the main file plus optional -wal/-shm).
    let mut stamps: Vec<u128> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let rest = n.strip_prefix(&prefix)?;
            rest.split('-').next()?.parse().ok()
        })
        .collect();
    stamps.sort_unstable();
    stamps.dedup();
    stamps
}
