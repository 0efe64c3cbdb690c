//! State-file writes of collectors, off the collection task (the health baselines
//! `health-*.json`, the plan store `plans.json`).
//!
//! A write runs on a blocking thread, never on the collection task: a hung disk (a frozen
//! filesystem, a stuck NFS server) must stall neither the cycle nor `/health` nor shutdown. While
//! the previous write has not returned, the next one is skipped and counted
//! (`state_writes_skipped`); the collector's data in memory stays current, so only a restart in
//! that window reads an older file. A failed write is warned once, until one succeeds again.
//! (The statement baseline has its own writer: it also tracks which generation the file holds.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::telemetry::registry::{Counters, Event};

/// One state file's writer: at most one write in flight.
pub(crate) struct StateWriter {
    /// What the file holds, for the warnings ("the health baseline", "the plan store").
    what: &'static str,
    path: PathBuf,
    /// `once --dry-run` and other read-only runs never write.
    read_only: bool,
    pending: Option<JoinHandle<()>>,
    /// Whether the last write failed.
    failed: Arc<AtomicBool>,
}

impl StateWriter {
    pub(crate) fn new(what: &'static str, path: PathBuf, read_only: bool) -> StateWriter {
        StateWriter {
            what,
            path,
            read_only,
            pending: None,
            failed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn set_read_only(&mut self) {
        self.read_only = true;
    }

    /// Runs `write` (given the file's path; it should write atomically through
    /// `state::file::write_atomic`) on a blocking thread. Returns false when nothing was started:
    /// a read-only run, or the previous write still pending (counted).
    pub(crate) fn write(
        &mut self,
        counters: &Counters,
        write: impl FnOnce(&Path) -> std::io::Result<()> + Send + 'static,
    ) -> bool {
        if self.read_only {
            return false;
        }
        if self.pending.as_ref().is_some_and(|h| !h.is_finished()) {
            counters.incr(Event::StateWritesSkipped);
            tracing::debug!(
                what = self.what,
                "the previous state write has not returned; skipped"
            );
            return false;
        }
        let (what, path, failed) = (self.what, self.path.clone(), self.failed.clone());
        self.pending = Some(tokio::task::spawn_blocking(move || match write(&path) {
            Ok(()) => {
                if failed.swap(false, Ordering::Relaxed) {
                    tracing::info!(file = %path.display(), "{what} is saved again");
                }
            }
            Err(e) => {
                if !failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(file = %path.display(), error = %e,
                        "cannot save {what}; it is kept in memory, but not across a restart");
                }
            }
        }));
        true
    }

    /// [`StateWriter::write`] of bytes already encoded, written atomically.
    pub(crate) fn write_bytes(&mut self, counters: &Counters, bytes: Vec<u8>) -> bool {
        self.write(counters, move |path| {
            crate::state::file::write_atomic(path, |out| std::io::Write::write_all(out, &bytes))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_the_file_and_never_when_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Counters::default();
        let path = dir.path().join("health-x.json");
        let mut ro = StateWriter::new("x", path.clone(), true);
        assert!(!ro.write_bytes(&counters, b"{}".to_vec()));
        assert!(!path.exists());
        let mut w = StateWriter::new("x", path.clone(), false);
        assert!(w.write_bytes(&counters, b"{\"a\":1}".to_vec()));
        w.pending.take().unwrap().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}");
    }
}
