//! Noticing that the outbox file was removed or replaced under the open database (`rm
//! state/outbox.db*`, `rm -rf` of the state directory, a restore over it), and putting a copy of
//! everything the open connection still holds back at the path.
//!
//! SQLite keeps writing an unlinked file without complaint, and a restart would then open an empty
//! (or someone else's) file: everything queued lost. The open connection still reads every row, so
//! `VACUUM INTO` a temporary file beside the path, fsync it, and rename it into place; the caller
//! then drops the old connection and opens the new file ([`install_copy`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{schema, Outbox, OutboxError};

/// How the file at the outbox's path differs from the one the connection has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    /// Nothing is at the path (the file or its directory was removed).
    Removed,
    /// Another file is at the path.
    Replaced,
}

impl FileChange {
    pub fn as_str(self) -> &'static str {
        match self {
            FileChange::Removed => "removed",
            FileChange::Replaced => "replaced by another file",
        }
    }
}

/// (device, inode) of `path`, if it exists.
pub(super) fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Outbox {
    /// Whether the file at the path is still the one this connection opened. Only a missing path
    /// or another inode count; a path that cannot be examined (permissions) is not a change.
    pub fn file_change(&self) -> Option<FileChange> {
        let opened = self.identity?;
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(FileChange::Removed),
            Err(_) => None,
            Ok(m) if (m.dev(), m.ino()) != opened => Some(FileChange::Replaced),
            Ok(_) => None,
        }
    }

    /// Requests waiting now (cheap: for the log line that says what was saved).
    pub fn depth(&self) -> Result<u64, OutboxError> {
        self.conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// Writes a complete copy of the open database (outbox, dead letters, counters, breaker) to
    /// `<path>.rebuild`, fsynced, creating the directory if it is gone. Returns the copy's path.
    pub fn save_copy(&self) -> Result<PathBuf, OutboxError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutboxError::Io { path, source }
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let tmp = copy_path(&self.path);
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
            _ => {}
        }
        let target = tmp.to_str().ok_or_else(|| OutboxError::Corrupt {
            path: self.path.clone(),
            detail: "the outbox path is not UTF-8; cannot copy it".into(),
        })?;
        self.conn
            .execute("VACUUM INTO ?1", [target])
            .map_err(|e| self.err(e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp))?;
        Ok(tmp)
    }
}

/// `<path>.rebuild`.
fn copy_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".rebuild");
    PathBuf::from(s)
}

/// Puts the copy made by [`Outbox::save_copy`] at `path` and opens it. Call after the old
/// connection is closed (its companions at the path, if any were left, are gone then). A foreign
/// file at the path is moved aside (`<path>.corrupt-<ms>`), never deleted.
pub fn install_copy(path: &Path, copy: &Path, max_size_bytes: u64) -> Result<Outbox, OutboxError> {
    let io = |source| OutboxError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        let moved = schema::move_aside(path)?;
        tracing::warn!(event = "outbox_foreign_file", moved_to = %moved.display(),
            "a file the agent did not write was at the outbox's path; moved it aside");
    }
    for companion in crate::state::aside::companions(path) {
        match std::fs::remove_file(&companion) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
    }
    std::fs::rename(copy, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable once the directory is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    let conn = schema::open_rw(path, max_size_bytes / 16)?;
    let outbox = Outbox::from_conn(conn, path, max_size_bytes)?;
    outbox.ensure_reserve();
    Ok(outbox)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchKind;
    use crate::config::Protocol;
    use crate::ship::outbox::NewBatch;

    fn row(n: u8) -> NewBatch {
        NewBatch {
            batch_id: uuid::Uuid::now_v7(),
            kind: BatchKind::SystemMetrics,
            collected_at: "2026-12-06T00:00:00.000Z".into(),
            body: vec![n; 100],
            protocol: Protocol::Batch,
        }
    }

    fn copied_back(remove: impl FnOnce(&Path)) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let path = dir.join("outbox.db");
        let mut ob = Outbox::open(&path, 64 << 20).unwrap();
        let rows: Vec<NewBatch> = (0..5).map(row).collect();
        ob.push_all(&rows).unwrap();
        assert_eq!(ob.file_change(), None);
        remove(&path);
        let change = ob.file_change().expect("the change is seen");
        // The open connection still takes writes (into the unlinked file).
        ob.push(&row(9)).unwrap();
        let copy = ob.save_copy().unwrap();
        drop(ob);
        let fresh = install_copy(&path, &copy, 64 << 20).unwrap();
        assert_eq!(fresh.file_change(), None, "after {change:?}");
        let queued: Vec<uuid::Uuid> = fresh
            .queued()
            .unwrap()
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        assert_eq!(queued.len(), 6);
        assert_eq!(
            &queued[..5],
            &rows.iter().map(|r| r.batch_id).collect::<Vec<_>>()[..]
        );
        assert!(!copy.exists());
        drop(fresh);
        // A restart reads the same.
        assert_eq!(
            Outbox::open(&path, 64 << 20)
                .unwrap()
                .queued()
                .unwrap()
                .len(),
            6
        );
    }

    #[test]
    fn a_removed_outbox_is_copied_back_with_every_row() {
        copied_back(|path| {
            for p in
                std::iter::once(path.to_path_buf()).chain(crate::state::aside::companions(path))
            {
                let _ = std::fs::remove_file(p);
            }
        });
    }

    #[test]
    fn a_removed_state_directory_is_recreated_with_every_row() {
        copied_back(|path| std::fs::remove_dir_all(path.parent().unwrap()).unwrap());
    }

    #[test]
    fn a_replaced_outbox_is_moved_aside_and_the_open_one_copied_back() {
        copied_back(|path| {
            std::fs::remove_file(path).unwrap();
            std::fs::write(path, b"someone else's file").unwrap();
        });
    }
}
