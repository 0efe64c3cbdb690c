//! The exclusive lock on the state directory: `<state_dir>/agent.lock`, held with `flock(LOCK_EX)`
//! for the life of the daemon (and of `once` without `--dry-run`), with the holder's PID written
//! into it. Two agents on one state directory would both send the same outbox rows and both
//! advance the same log position, so the second one refuses to start ([`LockError::Held`], exit 75).
//!
//! The kernel drops a `flock` when the process dies, however it dies, so a stale file left by a
//! crash never blocks a restart. If the file (or the whole directory) is removed under a running
//! daemon, [`StateLock::ensure`] creates it again and locks the new file; a directory the agent
//! cannot write does not stop it (the lock is taken once the directory is writable).
//!
//! It owns nothing else in the directory: the outbox, positions and records belong to their writers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The lock file's name under `agent.state_dir`.
pub const FILE_NAME: &str = "agent.lock";

/// sysexits.h EX_TEMPFAIL: another agent holds the state directory; trying later may succeed.
pub const EXIT_LOCKED: u8 = 75;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another postgres-agent (PID {}) is running on the state directory {} (it holds {}); \
         stop it first, or give this one its own agent.state_dir",
        pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
        dir.display(),
        dir.join(FILE_NAME).display()
    )]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock the state directory {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

impl LockError {
    /// True when the directory could not be locked for lack of rights or space (read-only, not
    /// writable, full): the daemon runs anyway and takes the lock once it can.
    pub fn is_storage(&self) -> bool {
        matches!(self, LockError::Io { .. })
    }
}

/// What [`StateLock::ensure`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// The lock file at the path is the one this process holds.
    Held,
    /// It was missing or replaced; this process created and locked a new one.
    Retaken,
    /// It cannot be created now (a read-only or missing directory that cannot be created).
    Unavailable(String),
    /// Another process locked the file now at the path.
    Lost { pid: Option<u32> },
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct StateLock {
    dir: PathBuf,
    /// The locked file and its (dev, inode); None while the directory could not be written.
    file: Option<(File, (u64, u64))>,
}

impl StateLock {
    /// Takes the lock on `dir`, creating the directory and the file if needed. `Held` when another
    /// process holds it; `Io` when the file can neither be created nor opened.
    pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
        let file = lock_file(dir)?;
        Ok(StateLock {
            dir: dir.to_path_buf(),
            file: Some(file),
        })
    }

    /// [`StateLock::acquire`], but a directory that cannot be written yet is not an error: the
    /// lock is taken by a later [`StateLock::ensure`].
    pub fn acquire_or_defer(dir: &Path) -> Result<StateLock, LockError> {
        match lock_file(dir) {
            Ok(file) => Ok(StateLock {
                dir: dir.to_path_buf(),
                file: Some(file),
            }),
            Err(e) if e.is_storage() => {
                tracing::warn!(event = "state_lock_deferred", error = %e,
                    "cannot lock the state directory now; taking the lock once it is writable");
                Ok(StateLock {
                    dir: dir.to_path_buf(),
                    file: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True while this process holds a lock file (false while the directory cannot be written).
    pub fn is_held(&self) -> bool {
        self.file.is_some()
    }

    /// Checks that the lock file at the path is still the one held (a `rm -rf` of the state
    /// directory removes it); if not, creates the directory and a new file and locks it.
    pub fn ensure(&mut self) -> Ensured {
        let current = std::fs::metadata(self.dir.join(FILE_NAME))
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if let (Some((_, held)), Some(at_path)) = (&self.file, current) {
            if *held == at_path {
                return Ensured::Held;
            }
        }
        match lock_file(&self.dir) {
            Ok(file) => {
                self.file = Some(file);
                Ensured::Retaken
            }
            Err(LockError::Held { pid, .. }) => Ensured::Lost { pid },
            Err(e) => Ensured::Unavailable(e.to_string()),
        }
    }
}

/// Opens (creating) `<dir>/agent.lock`, locks it without waiting and writes this PID into it.
fn lock_file(dir: &Path) -> Result<(File, (u64, u64)), LockError> {
    let io = |source| LockError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(FILE_NAME);
    let mut file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
    {
        Ok(f) => f,
        // A read-only directory with the file already there: a shared read-only descriptor
        // locks as well (it only cannot record the PID).
        Err(e) => File::open(&path).map_err(|_| io(e))?,
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                pid: holder_pid(&mut file),
            })
        }
        Err(e) => return Err(io(e.into())),
    }
    let meta = file.metadata().map_err(io)?;
    // The PID is for people and for the second agent's message; failing to write it changes
    // nothing about the lock.
    let pid = format!("{}\n", std::process::id());
    let _ = file
        .set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| file.write_all(pid.as_bytes()));
    Ok((file, (meta.dev(), meta.ino())))
}

/// The PID the holder wrote; it writes it right after locking, so an empty file is read again
/// for a moment.
fn holder_pid(file: &mut File) -> Option<u32> {
    for _ in 0..10 {
        let mut text = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() {
            if let Ok(pid) = text.trim().parse() {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in this process
        // conflicts like a second process would.
        match StateLock::acquire(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        StateLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_removed_directory_is_recreated_and_locked_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let mut lock = StateLock::acquire(&dir).unwrap();
        assert_eq!(lock.ensure(), Ensured::Held);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(lock.ensure(), Ensured::Retaken);
        assert!(matches!(
            StateLock::acquire(&dir),
            Err(LockError::Held { .. })
        ));
        assert_eq!(lock.ensure(), Ensured::Held);
    }
}
