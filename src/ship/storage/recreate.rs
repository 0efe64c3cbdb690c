//! [`Storage::check_outbox_file`]: once per cycle, whether the outbox file is still at its path;
//! when it was removed or replaced, the outbox is written back there from the open connection
//! ([`super::outbox::vanish`]) so that nothing it holds is lost at the next start.

use super::Storage;
use crate::ship::outbox::{vanish, FILE_NAME};
use crate::telemetry::registry::Event;

/// What [`Storage::check_outbox_file`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxFile {
    /// The file at the path is the open one (or no outbox is open, or it is busy).
    Present,
    /// It was removed or replaced; a copy of everything queued is at the path again.
    Recreated { change: String, requests: u64 },
    /// It was removed or replaced and could not be put back yet (tried again next cycle).
    Missing { change: String, error: String },
}

impl OutboxFile {
    /// The line for `/health`, `status` and the cycle summary; None when all is well.
    pub fn reason(&self) -> Option<String> {
        match self {
            OutboxFile::Present => None,
            OutboxFile::Recreated { change, requests } => Some(format!(
                "the outbox file ({FILE_NAME}) was {change} under the running agent; recreated \
                 it from the open database with the {requests} requests it held"
            )),
            OutboxFile::Missing { change, error } => Some(format!(
                "the outbox file ({FILE_NAME}) was {change} under the running agent and cannot \
                 be recreated yet ({error}); queued requests are only in the open database and \
                 would be lost at a restart"
            )),
        }
    }
}

impl Storage {
    /// Checks that the open outbox is the file at its path, and writes it back there if not. Waits
    /// for the outbox like a writer does ([`super::STORAGE_WAIT`]); a busy one is checked
    /// next time. Logs at ERROR once per incident; counts `outbox_vanished` and `outbox_recreated`.
    pub fn check_outbox_file(&self) -> OutboxFile {
        let Some(mut inner) = self.lock_within() else {
            return OutboxFile::Present;
        };
        let Some(ob) = inner.outbox.as_ref() else {
            return OutboxFile::Present;
        };
        let Some(change) = ob.file_change() else {
            return OutboxFile::Present;
        };
        let first = !ob.vanished_reported;
        if first {
            self.counters.add(Event::OutboxVanished, 1);
            tracing::error!(event = "outbox_vanished", outbox = %inner.path.display(),
                change = change.as_str(),
                "the outbox file was {} under the running agent; recreating it from the open \
                 database", change.as_str());
        }
        let requests = ob.depth().unwrap_or(0);
        let copy = match ob.save_copy() {
            Ok(copy) => copy,
            Err(e) => {
                if let Some(ob) = inner.outbox.as_mut() {
                    ob.vanished_reported = true;
                }
                if first {
                    tracing::error!(event = "outbox_recreate_failed", error = %e,
                        "cannot recreate the outbox file yet; trying again every cycle");
                }
                return OutboxFile::Missing {
                    change: change.as_str().into(),
                    error: e.to_string(),
                };
            }
        };
        // The old connection closes before the copy takes the path, so that nothing of it (its
        // write-ahead log) is left beside the new file.
        drop(inner.outbox.take());
        let (path, max) = (inner.path.clone(), inner.max_size_bytes);
        match vanish::install_copy(&path, &copy, max) {
            Ok(mut fresh) => {
                let _ = fresh.save_breaker(&inner.breaker);
                let _ = fresh.bump("recreated", 1);
                inner.outbox = Some(fresh);
                self.counters.add(Event::OutboxRecreated, 1);
                tracing::warn!(event = "outbox_file_recreated", outbox = %path.display(), requests,
                    "recreated the outbox file with everything it held");
                OutboxFile::Recreated {
                    change: change.as_str().into(),
                    requests,
                }
            }
            Err(e) => {
                // The copy stays where it is; the next write opens the path afresh.
                tracing::error!(event = "outbox_recreate_failed", error = %e,
                    copy = %copy.display(),
                    "cannot put the copy of the outbox in place; its requests are in the copy");
                OutboxFile::Missing {
                    change: change.as_str().into(),
                    error: e.to_string(),
                }
            }
        }
    }
}
