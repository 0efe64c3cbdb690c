//! What [`Storage`] does while the outbox takes no writes: holds requests in memory
//! ([`crate::ship::held`]), says the storage failure and its recovery, gives up what is still held
//! at exit, and keeps the disk space reserve beside the outbox.

use super::{State, Storage};
use crate::ship::outbox::{NewBatch, OutboxError};
use crate::telemetry::registry::Event;

impl Storage {
    pub fn hold(&self, rows: Vec<NewBatch>) {
        self.counters.add(Event::RequestsHeld, rows.len() as u64);
        let dropped = self.held().push(rows);
        if !dropped.is_empty() {
            self.counters.add(Event::HeldDropped, dropped.len() as u64);
            for (kind, id) in &dropped {
                tracing::warn!(event = "held_dropped", kind = %kind, batch_id = %id,
                    "memory bound reached while the outbox takes no writes: dropped the oldest request");
            }
        }
    }

    /// At exit, after the last send attempt: requests still held in memory are lost (the outbox
    /// took no writes). Counts them ([`Event::HeldLost`]), logs how many, and returns the count.
    pub fn abandon_held(&self) -> usize {
        let (n, bytes) = {
            let mut held = self.held();
            let n = (held.len(), held.bytes());
            held.clear();
            n
        };
        if n > 0 {
            self.counters.add(Event::HeldLost, n as u64);
            tracing::error!(
                event = "held_lost",
                requests = n,
                bytes,
                "requests held in memory (the outbox took no writes) could not be sent before \
                 exit and are lost"
            );
        }
        n
    }

    pub(super) fn storage_failed(&self, st: &mut State, e: &OutboxError) {
        self.counters.add(Event::OutboxStorageFailures, 1);
        if st.storage_error.is_none() {
            tracing::error!(event = "outbox_unwritable", error = %e,
                "the outbox does not take writes (full disk, read-only or failing storage); \
                 holding requests in memory and sending from there");
        }
        st.storage_error = Some(e.to_string());
    }

    pub(super) fn storage_recovered(&self, st: &mut State) {
        if st.storage_error.take().is_some() {
            tracing::info!(event = "outbox_writable", "the outbox takes writes again");
        }
        self.check_reserve(st);
    }

    /// Makes the disk space reserve if it is missing; its absence is logged once (until it exists).
    pub(super) fn check_reserve(&self, st: &mut State) {
        let missing = st.outbox.as_ref().and_then(|ob| ob.ensure_reserve());
        match (missing, st.reserve_missing) {
            (Some(why), false) => {
                st.reserve_missing = true;
                tracing::warn!(event = "outbox_reserve_missing", error = %why,
                    "no disk space reserve beside the outbox: on a full disk, making room may need \
                     the disk to give back space first (said once until the reserve exists)");
            }
            (None, true) => {
                st.reserve_missing = false;
                tracing::info!(
                    event = "outbox_reserve_made",
                    "the disk space reserve beside the outbox exists again"
                );
            }
            _ => {}
        }
    }
}
