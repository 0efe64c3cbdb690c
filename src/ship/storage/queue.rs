//! The request queue of [`Storage`]: what goes in ([`Storage::store`]: the outbox after anything
//! held in memory, making room on a full disk, the held requests written back once it takes writes),
//! what comes out next ([`Storage::pick`]), and what becomes of it once the listener answered
//! ([`Storage::delivered`], `failed`, `throttled`, `rejected`). Both ends are in one file because
//! the order out depends on how requests went in (held in memory before the outbox, imported ones
//! first).
//!
//! The order out: the backlog goes oldest-first, with a share kept for fresh data so that a long
//! backlog (after an outage or a full disk) never starves what is being collected now.
//!
//! While a backlog exists (the oldest request has waited more than [`BACKLOG_CYCLES`] collection
//! intervals, and at least 2 s), every [`FRESH_EVERY`]th request of a pass, its first included, is
//! the newest waiting request: one held in memory if any (held requests are newer than anything in
//! the outbox), else the newest in the outbox; pg_logs excepted either way (the log reader resumes
//! after the newest pg_logs request waiting, so those keep their order). The other three quarters
//! go to the backlog, oldest first. Without a backlog the order is strictly oldest-first. Payloads
//! imported from the Python agent's buffer are the exception: they go first, strictly in order. A
//! request is removed (or marked settled) once the listener took it, so neither end sends it again;
//! settled requests whose removal failed are skipped wherever they are.

use super::{State, Storage};
use crate::batch::BatchKind;
use crate::clock::now_ms;
use crate::config::Protocol;
use crate::ship::held::Settled;
use crate::ship::outbox::{self, EvictionReport, NewBatch, StoredBatch};
use crate::ship::ShipError;

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

/// One request in this many (the first of a pass included) goes to the newest data while there is a
/// backlog: a quarter of the pass, so the backlog still drains at three quarters of the rate.
pub const FRESH_EVERY: u64 = 4;

/// A request waiting longer than this many collection intervals (and 2 s) means a backlog; a
/// delivery that keeps up sends each cycle's requests within one, oldest first.
pub const BACKLOG_CYCLES: u32 = 2;

/// The next request of a drain pass: from the outbox, or held in memory.
pub enum Next {
    Stored(StoredBatch),
    Held(NewBatch),
}

impl Next {
    pub fn request(&self) -> (uuid::Uuid, BatchKind, &[u8], Protocol) {
        match self {
            Next::Stored(b) => (b.batch_id, b.kind, &b.body, b.protocol),
            Next::Held(r) => (r.batch_id, r.kind, &r.body, r.protocol),
        }
    }

    pub fn attempts(&self) -> u32 {
        match self {
            Next::Stored(b) => b.attempts,
            Next::Held(_) => 0,
        }
    }
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

    /// The request to send as the `nth` (0-based) of this pass; None when nothing waits. With
    /// `held_first` (the last pass before exit), requests held in memory go before anything else.
    pub fn pick(&self, nth: u64, held_first: bool) -> Result<Option<Next>, ShipError> {
        let mut st = self.lock();
        let inner = &mut *st;
        if held_first {
            if let Some(r) = self.held().front() {
                return Ok(Some(Next::Held(r.clone())));
            }
        }
        let oldest = match self.oldest_unsettled(inner) {
            Ok(b) => b,
            // Unreadable outbox: requests held in memory can still go.
            Err(e) => {
                return match self.held().front() {
                    Some(r) => Ok(Some(Next::Held(r.clone()))),
                    None => Err(e),
                }
            }
        };
        // Payloads imported from the Python agent's buffer go first, strictly in order.
        let importing = oldest
            .as_ref()
            .is_some_and(|b| b.seq <= inner.imported_until_seq);
        if nth % FRESH_EVERY == 0 && !importing {
            if let Some(fresh) = self.fresh(inner, oldest.as_ref())? {
                return Ok(Some(fresh));
            }
        }
        Ok(match oldest {
            Some(b) => Some(Next::Stored(b)),
            None => self.held().front().cloned().map(Next::Held),
        })
    }

    /// The newest request when there is a backlog ([`BACKLOG_CYCLES`]), else None.
    fn fresh(
        &self,
        inner: &mut State,
        oldest: Option<&StoredBatch>,
    ) -> Result<Option<Next>, ShipError> {
        let backlog_ms = (inner.interval * BACKLOG_CYCLES)
            .max(std::time::Duration::from_secs(2))
            .as_millis() as i64;
        let waited_since = match oldest {
            Some(b) => Some(b.enqueued_ms),
            None => self.held().front().and_then(|r| {
                crate::ship::encode::unix_seconds(&r.collected_at).map(|s| (s * 1000.0) as i64)
            }),
        };
        if waited_since.is_none_or(|t| now_ms() - t <= backlog_ms) {
            return Ok(None);
        }
        {
            let held = self.held();
            if oldest.is_some() || held.len() > 1 {
                let newest = held
                    .rows()
                    .iter()
                    .rev()
                    .find(|r| r.kind != BatchKind::PgLogs);
                if let Some(r) = newest {
                    return Ok(Some(Next::Held(r.clone())));
                }
            }
        }
        let Some(oldest) = oldest else {
            return Ok(None);
        };
        let mut below = i64::MAX;
        loop {
            let above = oldest.seq;
            match self.with_outbox(inner, |ob| ob.newest_between(above, below))? {
                Some(b) if inner.unremoved.contains(b.seq) => below = b.seq,
                other => return Ok(other.map(Next::Stored)),
            }
        }
    }

    /// The oldest request in the outbox that is not settled already.
    fn oldest_unsettled(&self, inner: &mut State) -> Result<Option<StoredBatch>, ShipError> {
        let mut after = 0;
        loop {
            match self.with_outbox(inner, |ob| ob.oldest_after(after))? {
                Some(b) if inner.unremoved.contains(b.seq) => after = b.seq,
                other => return Ok(other),
            }
        }
    }

    /// Before a pass: writes the requests held in memory to the outbox if it takes writes again,
    /// and removes settled requests whose removal failed before.
    pub fn prepare_pass(&self) {
        let mut st = self.lock();
        self.write_held(&mut st);
        self.remove_settled(&mut st);
    }

    /// Removes settled requests the outbox could not remove before (acks, dead letters).
    fn remove_settled(&self, st: &mut State) {
        if st.unremoved.is_empty() {
            return;
        }
        for (seq, how) in st.unremoved.take() {
            let result = match &how {
                Settled::Delivered(kind) => {
                    self.with_outbox(st, |ob| ob.ack(seq, *kind).map(|_| ()))
                }
                Settled::Rejected { status, reason } => {
                    self.with_outbox(st, |ob| ob.dead_letter(seq, *status, reason).map(|_| ()))
                }
            };
            if result.is_err() {
                st.unremoved.insert(seq, how);
            }
        }
    }

    /// The listener took `next`: removed from the outbox (or memory). Delivered but not removable
    /// (a full or read-only disk): never sent again; removed when the outbox takes writes.
    pub fn delivered(&self, next: &Next) {
        match next {
            Next::Stored(b) => {
                let mut st = self.lock();
                if let Err(e) = self.with_outbox(&mut st, |ob| ob.ack(b.seq, b.kind)) {
                    tracing::warn!(event = "outbox_error", error = %e, batch_id = %b.batch_id,
                        "delivered request could not be removed from the outbox yet");
                    st.unremoved.insert(b.seq, Settled::Delivered(b.kind));
                }
            }
            Next::Held(r) => {
                self.held().remove(r.batch_id);
            }
        }
    }

    /// `next` failed and stays queued: its attempt count and last error are recorded (only those
    /// are lost if this fails).
    pub fn failed(&self, next: &Next, reason: &str) {
        if let Next::Stored(b) = next {
            let mut st = self.lock();
            if let Err(e) = self.with_outbox(&mut st, |ob| ob.record_failure(b.seq, reason)) {
                tracing::debug!(event = "outbox_error", error = %e,
                    "cannot record the failed attempt");
            }
        }
    }

    /// Counts a request the listener answered 429 in the outbox's cumulative figures.
    pub fn throttled(&self) {
        let mut st = self.lock();
        if let Err(e) = self.with_outbox(&mut st, |ob| ob.bump("throttled", 1)) {
            tracing::debug!(event = "outbox_error", error = %e,
                "cannot count the throttled request");
        }
    }

    /// The listener rejected `next` for good: moved to the dead letters. Held in memory: there is
    /// nowhere to keep it; the caller's log line is its record.
    pub fn rejected(&self, next: &Next, status: Option<u16>, reason: &str) {
        match next {
            Next::Stored(b) => {
                let mut st = self.lock();
                match self.with_outbox(&mut st, |ob| ob.dead_letter(b.seq, status, reason)) {
                    Ok(dropped) => {
                        if dropped > 0 {
                            tracing::warn!(
                                event = "dead_letters_dropped",
                                count = dropped,
                                "dead letter limit reached; dropped the oldest"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(event = "outbox_error", error = %e,
                            "cannot move the batch to the dead letters yet");
                        st.unremoved.insert(
                            b.seq,
                            Settled::Rejected {
                                status,
                                reason: reason.to_string(),
                            },
                        );
                    }
                }
            }
            Next::Held(r) => {
                self.held().remove(r.batch_id);
            }
        }
    }
}
