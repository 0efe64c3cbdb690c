//! Where [`Storage`] puts encoded requests: the outbox after anything held in memory, making room
//! on a full disk, holding requests in memory while the outbox takes no writes ([`crate::ship::held`])
//! or while another writer is stuck on it, and the disk space reserve.

use super::{State, Storage};
use crate::ship::outbox::{self, EvictionReport, NewBatch, OutboxError};
use crate::ship::ShipError;
use crate::telemetry::registry::Event;

/// Where [`Storage::store`] put a batch's requests.
pub enum Stored {
    /// In the outbox: `evicted` requests (possibly some of these) were evicted to make room.
    Outbox {
        evicted: usize,
    },
    /// Held in memory (the outbox takes no writes, or another writer is stuck on it).
    Memory,
    Failed(ShipError),
}

impl Storage {
    /// Stores a batch's encoded requests durably (one transaction, with the log `cursor` of a
    /// pg_logs batch), counting `merged` correlated statements in the outbox. While another writer
    /// is stuck on the storage ([`super::STORAGE_WAIT`]), they are held in memory instead: sent from
    /// there while the listener answers, written once the outbox answers again.
    pub fn store(&self, rows: Vec<NewBatch>, merged: usize, cursor: Option<&str>) -> Stored {
        let Some(mut st) = self.lock_within() else {
            self.hold(rows);
            return Stored::Memory;
        };
        if merged > 0 {
            let _ = self.with_outbox(&mut st, |ob| ob.bump("correlated_merged", merged as i64));
        }
        match self.store_rows(&mut st, rows, cursor) {
            Ok(eviction) => {
                self.log_evictions(&eviction, "buffer.max_size_mb reached");
                Stored::Outbox {
                    evicted: eviction.evicted.len(),
                }
            }
            Err(None) => Stored::Memory,
            Err(Some(e)) => Stored::Failed(e),
        }
    }

    /// Writes `rows` to the outbox; on a full disk makes room by evicting the oldest requests and
    /// tries once more; when the storage still refuses, holds them in memory. While requests are
    /// held, new ones are held after them (the delivery pass writes them all to the outbox, in
    /// order, once it takes writes: [`Storage::write_held`]). Other errors are returned.
    /// (Err(None): held in memory.)
    fn store_rows(
        &self,
        st: &mut State,
        rows: Vec<NewBatch>,
        cursor: Option<&str>,
    ) -> Result<EvictionReport, Option<ShipError>> {
        if !self.held().is_empty() {
            self.hold(rows);
            return Err(None);
        }
        match self.push_making_space(st, &rows, cursor) {
            Ok(eviction) => {
                self.storage_recovered(st);
                Ok(eviction)
            }
            Err(ShipError::Outbox(e)) if e.is_storage() => {
                self.storage_failed(st, &e);
                self.hold(rows);
                Err(None)
            }
            Err(e) => Err(Some(e)),
        }
    }

    /// Writes `rows` to the outbox; on a full disk evicts the oldest requests to make room
    /// ([`outbox::Outbox::make_space`]) and tries once more.
    fn push_making_space(
        &self,
        st: &mut State,
        rows: &[NewBatch],
        cursor: Option<&str>,
    ) -> Result<EvictionReport, ShipError> {
        let result = self.with_outbox(st, |ob| ob.push_all_with_cursor(rows, cursor));
        match &result {
            Err(ShipError::Outbox(e)) if e.is_disk_full() => {
                let need: u64 = rows.iter().map(|r| outbox::charge(r.body.len())).sum();
                match self.with_outbox(st, |ob| ob.make_space(need)) {
                    Ok(freed) => {
                        self.log_evictions(&freed, "the disk is full");
                        self.with_outbox(st, |ob| ob.push_all_with_cursor(rows, cursor))
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot evict on a full disk");
                        result
                    }
                }
            }
            _ => result,
        }
    }

    /// Moves requests held in memory into the outbox, in order, if it takes writes again (making
    /// room on a full disk). Only the delivery pass calls it (under its one-at-a-time lock), so no
    /// held request is in flight meanwhile.
    pub(super) fn write_held(&self, st: &mut State) {
        let rows: Vec<NewBatch> = {
            let held = self.held();
            if held.is_empty() {
                return;
            }
            held.rows().iter().cloned().collect()
        };
        match self.push_making_space(st, &rows, None) {
            Ok(eviction) => {
                tracing::info!(
                    event = "held_written",
                    requests = rows.len(),
                    "the outbox takes writes again; requests held in memory are stored"
                );
                // Only what was written: writers may have held more meanwhile.
                let mut held = self.held();
                for r in &rows {
                    held.pop_if_front(r.batch_id);
                }
                drop(held);
                self.log_evictions(&eviction, "buffer.max_size_mb reached");
                self.storage_recovered(st);
            }
            Err(e) => tracing::debug!(error = %e, "the outbox still does not take writes"),
        }
    }

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

    fn storage_recovered(&self, st: &mut State) {
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
