//! Writes of the health state files (`health-*.json`) off the collection task.
//!
//! A state file is written on a blocking thread, never on the collection task: a hung disk (a
//! frozen filesystem, a stuck NFS server) must stall neither the cycle nor `/health` nor shutdown,
//! as the statement baseline's and the plan store's writes do not. While the previous write has
//! not returned, the next one is skipped and counted (`state_writes_skipped`); the baseline in
//! memory stays current, so deltas go on and only a restart in that window reads an older file.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::telemetry::registry::{Counters, Event};

/// One state file's writer: at most one write in flight.
pub(crate) struct Saver {
    /// `once --dry-run` and other read-only runs never write.
    read_only: bool,
    pending: Option<JoinHandle<()>>,
    /// Whether the last write failed (warned once until a write succeeds again).
    failed: Arc<AtomicBool>,
}

impl Saver {
    pub(crate) fn new(read_only: bool) -> Saver {
        Saver {
            read_only,
            pending: None,
            failed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Writes `bytes` to `path` atomically (`state::file::write_atomic`) on a blocking thread.
    /// `what` names the file in the warning a failed write gives.
    pub(crate) fn save(
        &mut self,
        what: &'static str,
        path: PathBuf,
        bytes: Vec<u8>,
        counters: &Counters,
    ) {
        if self.read_only {
            return;
        }
        if self.pending.as_ref().is_some_and(|h| !h.is_finished()) {
            counters.incr(Event::StateWritesSkipped);
            tracing::debug!(
                what,
                "the previous health state write has not returned; skipped"
            );
            return;
        }
        let failed = self.failed.clone();
        self.pending = Some(tokio::task::spawn_blocking(move || {
            match crate::state::file::write_atomic(&path, |out| out.write_all(&bytes)) {
                Ok(()) => {
                    if failed.swap(false, Ordering::Relaxed) {
                        tracing::info!(what, file = %path.display(), "the health state file is written again");
                    }
                }
                Err(e) => {
                    if !failed.swap(true, Ordering::Relaxed) {
                        tracing::warn!(what, file = %path.display(), error = %e,
                            "cannot save the health state file; deltas continue from memory, a restart may repeat or lose one interval");
                    }
                }
            }
        }));
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
        let mut ro = Saver::new(true);
        ro.save("x", path.clone(), b"{}".to_vec(), &counters);
        assert!(ro.pending.is_none());
        let mut s = Saver::new(false);
        s.save("x", path.clone(), b"{\"a\":1}".to_vec(), &counters);
        s.pending.take().unwrap().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}");
    }
}
