//! Where requests go when the storage misbehaves: writing to the outbox after anything held in
//! memory, making room on a full disk, holding requests in memory while the outbox takes no writes
//! ([`super::held`]), and re-encoding requests queued in another protocol.

use super::outbox::{self, EvictionReport, NewBatch, OutboxError};
use super::shipper::{Inner, Shipper, Stored};
use super::ShipError;
use crate::batch::Batch;
use crate::config::Protocol;
use crate::telemetry::registry::Event;

impl Shipper {
    /// Writes `rows` to the outbox; on a full disk makes room by evicting the oldest requests and
    /// tries once more; when the storage still refuses, holds them in memory. While requests are
    /// held, new ones are held after them (the delivery pass writes them all to the outbox, in
    /// order, once it takes writes: [`Shipper::write_held`]). Other errors are returned.
    pub(super) fn store(
        &self,
        inner: &mut Inner,
        rows: Vec<NewBatch>,
        cursor: Option<&str>,
    ) -> Stored {
        if !self.held().is_empty() {
            self.hold(rows);
            return Stored::Memory;
        }
        match self.push_making_space(inner, &rows, cursor) {
            Ok(eviction) => {
                self.storage_recovered(inner);
                Stored::Outbox(eviction)
            }
            Err(ShipError::Outbox(e)) if e.is_storage() => {
                self.storage_failed(inner, &e);
                self.hold(rows);
                Stored::Memory
            }
            Err(e) => Stored::Failed(e),
        }
    }

    /// Writes `rows` to the outbox; on a full disk evicts the oldest requests to make room
    /// ([`outbox::Outbox::make_space`]) and tries once more.
    fn push_making_space(
        &self,
        inner: &mut Inner,
        rows: &[NewBatch],
        cursor: Option<&str>,
    ) -> Result<EvictionReport, ShipError> {
        let result = self.with_outbox(inner, |ob| ob.push_all_with_cursor(rows, cursor));
        match &result {
            Err(ShipError::Outbox(e)) if e.is_disk_full() => {
                let need: u64 = rows.iter().map(|r| outbox::charge(r.body.len())).sum();
                match self.with_outbox(inner, |ob| ob.make_space(need)) {
                    Ok(freed) => {
                        self.log_evictions(&freed, "the disk is full");
                        self.with_outbox(inner, |ob| ob.push_all_with_cursor(rows, cursor))
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
    pub(super) fn write_held(&self, inner: &mut Inner) {
        let rows: Vec<NewBatch> = {
            let held = self.held();
            if held.is_empty() {
                return;
            }
            held.rows().iter().cloned().collect()
        };
        match self.push_making_space(inner, &rows, None) {
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
                self.storage_recovered(inner);
            }
            Err(e) => tracing::debug!(error = %e, "the outbox still does not take writes"),
        }
    }

    /// Encodes a batch and holds its requests in memory without touching the outbox: for a writer
    /// that must not wait on the storage (the daemon's state writer, when it is behind). Returns
    /// the number of requests held.
    pub fn hold_batch(&self, batch: &Batch) -> Result<usize, ShipError> {
        if !self.has_listener() {
            return self.enqueue(batch).map(|r| r.held);
        }
        let encoded = self.encoder().encode(batch).map_err(|e| {
            self.counters.add(Event::EnqueueFailures, 1);
            ShipError::from(e)
        })?;
        let n = encoded.rows.len();
        self.hold(encoded.rows);
        Ok(n)
    }

    pub(super) fn hold(&self, rows: Vec<NewBatch>) {
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

    pub(super) fn storage_failed(&self, inner: &mut Inner, e: &OutboxError) {
        self.counters.add(Event::OutboxStorageFailures, 1);
        if inner.storage_error.is_none() {
            tracing::error!(event = "outbox_unwritable", error = %e,
                "the outbox does not take writes (full disk, read-only or failing storage); \
                 holding requests in memory and sending from there");
        }
        inner.storage_error = Some(e.to_string());
    }

    fn storage_recovered(&self, inner: &mut Inner) {
        if inner.storage_error.take().is_some() {
            tracing::info!(event = "outbox_writable", "the outbox takes writes again");
        }
        self.check_reserve(inner);
    }

    /// Makes the disk space reserve if it is missing; its absence is logged once (until it exists).
    pub(super) fn check_reserve(&self, inner: &mut Inner) {
        let missing = inner.outbox.as_ref().and_then(|ob| ob.ensure_reserve());
        match (missing, inner.reserve_missing) {
            (Some(why), false) => {
                inner.reserve_missing = true;
                tracing::warn!(event = "outbox_reserve_missing", error = %why,
                    "no disk space reserve beside the outbox: on a full disk, making room may need \
                     the disk to give back space first (said once until the reserve exists)");
            }
            (None, true) => {
                inner.reserve_missing = false;
                tracing::info!(
                    event = "outbox_reserve_made",
                    "the disk space reserve beside the outbox exists again"
                );
            }
            _ => {}
        }
    }

    /// Re-encodes batch-protocol requests still queued (written before `listener.protocol` became
    /// `bitville`) as bitville requests, so switching protocols loses nothing. A request that cannot
    /// be read back stays as it is (logged); it will be sent as written.
    pub(super) fn convert_queued(&self, inner: &mut Inner) {
        let seqs = match self.with_outbox(inner, |ob| ob.seqs_in(Protocol::Batch)) {
            Ok(seqs) => seqs,
            Err(e) => {
                tracing::error!(event = "outbox_error", error = %e, "cannot list queued batches");
                return;
            }
        };
        let mut converted = 0;
        for seq in seqs {
            let Ok(Some(body)) = self.with_outbox(inner, |ob| ob.body(seq)) else {
                continue;
            };
            let mut json = Vec::new();
            let batch =
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut json)
                    .map_err(|e| e.to_string())
                    .and_then(|_| {
                        serde_json::from_slice::<Batch>(&json).map_err(|e| e.to_string())
                    });
            drop(json);
            let rows = match batch {
                Ok(batch) => self.encoder().encode(&batch).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match rows {
                Ok(encoded) => match self.with_outbox(inner, |ob| ob.replace(seq, &encoded.rows)) {
                    Ok(()) => converted += 1,
                    Err(e) => tracing::error!(event = "outbox_error", error = %e, seq,
                        "cannot convert a queued batch to the bitville protocol"),
                },
                Err(e) => tracing::warn!(event = "convert_skipped", seq, error = %e,
                    "a queued batch-protocol request cannot be read back; it is sent as written"),
            }
        }
        if converted > 0 {
            tracing::info!(
                event = "queued_converted",
                batches = converted,
                "re-encoded batches queued in the batch protocol as bitville requests"
            );
        }
    }
}
