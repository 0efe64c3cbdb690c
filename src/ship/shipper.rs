//! [`Shipper`]: the one object the daemon holds for shipping, a thin front over its two halves:
//! [`Storage`] (outbox, held requests, eviction, space, pick of the next request) and [`Delivery`]
//! (sender, breaker, Retry-After, rate limit, the drain loop). The front encodes batches
//! ([`super::encode`]) and hands the requests to storage, switches to stdout JSON lines when no
//! listener is configured, and puts the two halves' figures together for `stats()`.
//!
//! Lock order: the delivery pass lock, then delivery's state, then storage's state, then the held
//! requests (each half documents its own); the front's encoder lock is taken alone.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::breaker::BreakerState;
use super::delivery::{Delivery, DrainReport};
use super::encode::{EncodeCounters, Encoder, PrepareError, MAX_BODY_BYTES};
use super::http::Sender;
use super::outbox::{NewBatch, OutboxStats};
use super::python_buffer::LegacyPayload;
use super::storage::recreate::OutboxFile;
use super::storage::{Storage, Stored};
use super::ShipError;
use crate::batch::Batch;
use crate::config::{Config, Protocol};
use crate::telemetry::registry::{Counters, Event};

pub use super::storage::{LOG_CURSOR_FIELD, STORAGE_WAIT};

/// What [`Shipper::enqueue`] did with a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnqueueReport {
    /// Parts stored in the outbox (more than 1 when the batch was split).
    pub stored_parts: usize,
    /// Batches evicted to make room (possibly including this one's parts).
    pub evicted: usize,
    /// True when written to stdout instead (no listener configured).
    pub stdout: bool,
    /// Requests held in memory because the outbox could not take them (full disk, read-only state
    /// directory): sent from memory, written to the outbox when it recovers, lost if the process
    /// dies first.
    pub held: usize,
}

/// Figures for `/metrics` and `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShipStats {
    /// "outbox" or "stdout".
    pub mode: &'static str,
    pub listener_url: Option<String>,
    pub max_size_bytes: u64,
    /// Persistent figures of the outbox, when it is open.
    pub outbox: Option<OutboxStats>,
    pub breaker: Option<BreakerState>,
    /// Since this process started.
    pub process: ProcessStats,
}

/// Counters since this process started (the outbox keeps cumulative ones across restarts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessStats {
    pub stdout_lines: u64,
    pub enqueue_failures: u64,
    pub evicted: u64,
    pub dead_lettered: u64,
    pub delivered: u64,
    pub send_failures: u64,
    pub outbox_recreated: u64,
    pub throttled: u64,
    /// Correlated payloads made, statements merged and repeats not sent (bitville protocol).
    pub encode: EncodeCounters,
    pub storage_failures: u64,
    pub held_total: u64,
    pub held_dropped: u64,
    /// Held in memory at exit and not sent (lost).
    pub held_lost: u64,
    /// Writes that found the outbox stuck (a hung disk) and went to memory.
    pub storage_stalls: u64,
    /// Requests in memory now, and their bytes.
    pub held_now: usize,
    pub held_bytes: usize,
    /// Settled requests the outbox could not remove yet (never sent again).
    pub unremoved: usize,
    /// Why the outbox does not take writes, while it does not.
    pub storage_error: Option<String>,
}

/// The shipping side of the agent. Cheap to share (`&Shipper` from any task): every method takes
/// `&self`; the outbox is behind storage's mutex, held only for single SQLite statements, never
/// across a request.
pub struct Shipper {
    storage: Storage,
    delivery: Delivery,
    /// A listener is configured (else batches go to stdout).
    has_listener: AtomicBool,
    /// Turns batches into stored requests (`listener.protocol`); locked only while encoding.
    encoder: Mutex<Encoder>,
    /// What this process counts (the daemon's registry, exported on /metrics).
    counters: Counters,
}

impl Shipper {
    /// Opens the outbox at `<agent.state_dir>/outbox.db` (when a listener is configured) and builds
    /// the HTTP client.
    pub fn open(config: &Config) -> Result<Shipper, ShipError> {
        Shipper::open_counted(config, MAX_BODY_BYTES, Counters::default())
    }

    /// [`Shipper::open`] with a different per-request body limit (tests use small ones).
    pub fn open_with(config: &Config, max_body_bytes: usize) -> Result<Shipper, ShipError> {
        Shipper::open_counted(config, max_body_bytes, Counters::default())
    }

    /// [`Shipper::open_with`] counting into `counters` (the daemon's registry).
    pub fn open_counted(
        config: &Config,
        max_body_bytes: usize,
        counters: Counters,
    ) -> Result<Shipper, ShipError> {
        let shipper = Shipper {
            storage: Storage::new(config, counters.clone()),
            delivery: Delivery::new(config, counters.clone()),
            has_listener: AtomicBool::new(false),
            encoder: Mutex::new(Encoder::new(config, max_body_bytes).counting(counters.clone())),
            counters,
        };
        shipper.reconfigure(config)?;
        Ok(shipper)
    }

    /// Applies a reloaded configuration: listener, breaker and buffer settings. Queued batches are
    /// kept; a smaller cap evicts (counted) at once. `agent.state_dir` is not changed by a reload
    /// (a warning says so); restart to move the outbox.
    pub fn reconfigure(&self, config: &Config) -> Result<(), ShipError> {
        let sender = match &config.listener.url {
            Some(url) => Some(Arc::new(Sender::new(&config.listener, url)?)),
            None => None,
        };
        self.delivery.configure(config);
        self.encoder().reconfigure(config);
        if let Some(saved) = self.storage.reconfigure(config, sender.is_some())? {
            self.delivery.restore_breaker(saved);
        }
        if sender.is_some() && config.listener.protocol == Protocol::Bitville {
            self.convert_queued();
        }
        self.storage.apply_max_size()?;
        self.has_listener.store(sender.is_some(), Ordering::Relaxed);
        self.delivery.set_sender(sender);
        Ok(())
    }

    /// True when a listener is configured (else batches go to stdout).
    pub fn has_listener(&self) -> bool {
        self.has_listener.load(Ordering::Relaxed)
    }

    fn encoder(&self) -> std::sync::MutexGuard<'_, Encoder> {
        // Encoding holds no state a panic could leave half-written beyond the dedup memory.
        self.encoder.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a batch: with a listener, encodes it for `listener.protocol` ([`super::encode`]) and
    /// stores its requests durably in the outbox in one transaction, returning once they are
    /// committed; without one, prints it as one JSON line on stdout.
    pub fn enqueue(&self, batch: &Batch) -> Result<EnqueueReport, ShipError> {
        self.enqueue_with_cursor(batch, None)
    }

    /// [`Shipper::enqueue`] of a pg_logs batch with the log position after its entries (`cursor`,
    /// JSON text), stored in the outbox in the same transaction as the batch's requests and read
    /// back on start by [`Shipper::log_cursor`]. Requests held in memory (the outbox takes no
    /// writes) keep it only in their body.
    pub fn enqueue_with_cursor(
        &self,
        batch: &Batch,
        cursor: Option<&str>,
    ) -> Result<EnqueueReport, ShipError> {
        if !self.has_listener.load(Ordering::Relaxed) {
            return self.print(batch);
        }
        let encoded = self.encode(batch)?;
        let n = encoded.rows.len();
        let report = |stored_parts, evicted, held| EnqueueReport {
            stored_parts,
            evicted,
            stdout: false,
            held,
        };
        match self.storage.store(encoded.rows, encoded.merged, cursor) {
            Stored::Outbox { evicted } => Ok(report(n.saturating_sub(evicted), evicted, 0)),
            Stored::Memory => Ok(report(0, 0, n)),
            Stored::Failed(e) => {
                self.counters.add(Event::EnqueueFailures, 1);
                Err(e)
            }
        }
    }

    /// Encodes a batch for `listener.protocol`, counting the correlated payloads.
    fn encode(&self, batch: &Batch) -> Result<super::encode::Encoded, ShipError> {
        let encoded = self.encoder().encode(batch).map_err(|e| {
            self.counters.add(Event::EnqueueFailures, 1);
            ShipError::from(e)
        })?;
        self.counters.add(
            Event::CorrelatedPayloads,
            encoded.correlated_payloads as u64,
        );
        self.counters
            .add(Event::CorrelatedMerged, encoded.merged as u64);
        self.counters
            .add(Event::CorrelatedRepeated, encoded.repeated as u64);
        Ok(encoded)
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
        self.storage.hold(encoded.rows);
        Ok(n)
    }

    /// At exit, after the last send attempt: requests still held in memory are lost (the outbox
    /// took no writes). Counts them ([`Event::HeldLost`]), logs how many, and returns the count.
    pub fn abandon_held(&self) -> usize {
        self.storage.abandon_held()
    }

    /// Stores one payload of the Bitville Python agent's buffer as a bitville request, so it is
    /// sent (oldest first, before anything collected after it) like the agent's own.
    pub fn enqueue_python_payload(&self, p: &LegacyPayload) -> Result<(), ShipError> {
        let kind = super::encode::bitville::kind_of_source(&p.source);
        let batch_id = uuid::Uuid::now_v7();
        let body = super::encode::gzip(p.json.as_bytes())
            .map_err(|source| ShipError::from(PrepareError::Gzip { batch_id, source }))?;
        let collected_at =
            time::OffsetDateTime::from_unix_timestamp_nanos((p.timestamp * 1e9) as i128)
                .map(crate::clock::format_rfc3339)
                .unwrap_or_else(|_| crate::clock::now_rfc3339());
        let row = NewBatch {
            batch_id,
            kind,
            collected_at,
            body,
            protocol: Protocol::Bitville,
        };
        self.storage.push_imported(&row)
    }

    fn print(&self, batch: &Batch) -> Result<EnqueueReport, ShipError> {
        let line = serde_json::to_string(batch).map_err(|source| {
            self.counters.add(Event::EnqueueFailures, 1);
            ShipError::Json {
                batch_id: batch.batch_id,
                source,
            }
        })?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|source| {
                self.counters.add(Event::EnqueueFailures, 1);
                ShipError::Stdout { source }
            })?;
        self.counters.add(Event::StdoutLines, 1);
        Ok(EnqueueReport {
            stored_parts: 0,
            evicted: 0,
            stdout: true,
            held: 0,
        })
    }

    /// Re-encodes batch-protocol requests still queued (written before `listener.protocol` became
    /// `bitville`) as bitville requests, so switching protocols loses nothing. A request that cannot
    /// be read back stays as it is (logged); it will be sent as written.
    /// The whole conversion runs under storage's lock, as one piece of work on the outbox, so that
    /// a drain pass never sends a request that is being replaced.
    fn convert_queued(&self) {
        let converted = self.storage.outbox(|ob| {
            let mut converted = 0;
            for seq in ob.seqs_in(Protocol::Batch)? {
                let Ok(Some(body)) = ob.body(seq) else {
                    continue;
                };
                let mut json = Vec::new();
                let batch = std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(&body[..]),
                    &mut json,
                )
                .map_err(|e| e.to_string())
                .and_then(|_| serde_json::from_slice::<Batch>(&json).map_err(|e| e.to_string()))
                .map(|mut batch| {
                    // Stored JSON has no typed correlated statements: rebuild them from it.
                    batch.restore_correlated();
                    batch
                });
                drop(json);
                let rows: Result<Vec<NewBatch>, String> = match batch {
                    Ok(batch) => self
                        .encoder()
                        .encode(&batch)
                        .map(|e| e.rows)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match rows {
                    Ok(rows) => match ob.replace(seq, &rows) {
                        Ok(()) => converted += 1,
                        Err(e) => tracing::error!(event = "outbox_error", error = %e, seq,
                            "cannot convert a queued batch to the bitville protocol"),
                    },
                    Err(e) => tracing::warn!(event = "convert_skipped", seq, error = %e,
                        "a queued batch-protocol request cannot be read back; it is sent as written"),
                }
            }
            Ok(converted)
        });
        match converted {
            Ok(0) => {}
            Ok(converted) => tracing::info!(
                event = "queued_converted",
                batches = converted,
                "re-encoded batches queued in the batch protocol as bitville requests"
            ),
            Err(e) => {
                tracing::error!(event = "outbox_error", error = %e, "cannot list queued batches")
            }
        }
    }

    /// The log cursor stored with the newest waiting pg_logs batch ([`Storage::log_cursor`]):
    /// what the log reader needs on start to skip entries already written to the outbox before a
    /// crash. None in stdout mode, when no pg_logs batch waits, or when it cannot be read.
    pub fn log_cursor(&self) -> Option<serde_json::Value> {
        if !self.has_listener() {
            return None;
        }
        self.storage.log_cursor()
    }

    /// Once per cycle: whether the outbox file is still at its path, written back there if not
    /// ([`Storage::check_outbox_file`]).
    pub fn check_outbox_file(&self) -> OutboxFile {
        self.storage.check_outbox_file()
    }

    /// The directory of the outbox, unless the outbox is stuck (a hung disk).
    pub fn state_dir(&self) -> Option<PathBuf> {
        self.storage.state_dir()
    }

    /// Sends queued batches ([`Delivery::drain`]): oldest first, within `budget`.
    pub async fn drain(&self, budget: Duration) -> DrainReport {
        self.drain_until(budget, &CancellationToken::new()).await
    }

    /// [`Shipper::drain`] that starts no new request once `stop` is cancelled (a request in flight
    /// finishes; the caller bounds how long it waits for that).
    pub async fn drain_until(&self, budget: Duration, stop: &CancellationToken) -> DrainReport {
        self.delivery
            .drain(&self.storage, budget, stop, false)
            .await
    }

    /// The last pass before exit: requests held in memory go first (what is in the outbox is sent
    /// after the next start; what is in memory only has this attempt), then the rest as usual.
    pub async fn drain_final(&self, budget: Duration) -> DrainReport {
        self.delivery
            .drain(&self.storage, budget, &CancellationToken::new(), true)
            .await
    }

    /// Current figures (reads the outbox; cheap). While the outbox is stuck (a hung disk), the
    /// outbox figures it gave last, with the counters of now.
    pub fn stats(&self) -> Result<ShipStats, ShipError> {
        let delivery = self.delivery.figures();
        let storage = self.storage.figures()?;
        let c = &self.counters;
        Ok(ShipStats {
            mode: if self.has_listener() {
                "outbox"
            } else {
                "stdout"
            },
            listener_url: delivery.listener_url,
            max_size_bytes: storage.max_size_bytes,
            outbox: storage.outbox,
            breaker: delivery.breaker,
            process: ProcessStats {
                stdout_lines: c.get(Event::StdoutLines),
                enqueue_failures: c.get(Event::EnqueueFailures),
                evicted: c.get(Event::RequestsEvicted),
                dead_lettered: c.get(Event::RequestsDeadLettered),
                delivered: c.get(Event::RequestsDelivered),
                send_failures: c.get(Event::SendFailures),
                outbox_recreated: c.get(Event::OutboxRecreated),
                throttled: c.get(Event::RequestsThrottled),
                encode: EncodeCounters {
                    correlated_payloads: c.get(Event::CorrelatedPayloads),
                    correlated_merged: c.get(Event::CorrelatedMerged),
                    correlated_repeated: c.get(Event::CorrelatedRepeated),
                },
                storage_failures: c.get(Event::OutboxStorageFailures),
                held_total: c.get(Event::RequestsHeld),
                held_dropped: c.get(Event::HeldDropped),
                held_lost: c.get(Event::HeldLost),
                storage_stalls: c.get(Event::OutboxStorageStalls),
                held_now: storage.held_now,
                held_bytes: storage.held_bytes,
                unremoved: storage.unremoved,
                storage_error: storage.storage_error,
            },
        })
    }
}
